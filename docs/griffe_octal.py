"""Griffe extension for the API reference (loaded by mkdocs.yml).

Griffe renders a default from the parsed value, so ``mode=0o600`` would read
``mode=384``.  Defaults written in octal are shown as written.
"""
import ast

from griffe import Extension


class OctalDefaults(Extension):
    def on_function_instance(self, *, node, func, **kwargs):
        code = getattr(kwargs.get("agent"), "code", None)
        if not code or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        args = node.args
        positional = args.posonlyargs + args.args
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for arg, default in pairs:
            text = ast.get_source_segment(code, default)
            if text and text.lower().startswith("0o") and arg.arg in func.parameters:
                func.parameters[arg.arg].default = text
