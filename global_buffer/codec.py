"""Message codecs: pydantic models on the public side, msgspec on the wire.

Encoding skips ``model_dump()``: msgspec walks the model's field values
directly (``enc_hook`` hands it ``__dict__`` of each model, nested ones
included), which is several times faster and produces the same msgpack for
plain fields.  Models with custom serializers take the ``model_dump`` path,
so their serializers still run.  Decoding validates with pydantic-core
(``model_validate``) from the decoded dict: reads return validated models.
"""
import msgspec
import pydantic

__all__ = ["MessageCodec", "is_model"]


def is_model(obj):
    return isinstance(obj, type) and issubclass(obj, pydantic.BaseModel)


def _plain_fields(model):
    """True if __dict__ is a faithful serialisation of ``model``."""
    dec = model.__pydantic_decorators__
    if dec.field_serializers or dec.model_serializers or dec.computed_fields:
        return False
    if model.model_config.get("extra") == "allow":
        return False
    return True


def _enc_hook(obj):
    if isinstance(obj, pydantic.BaseModel):
        if _plain_fields(type(obj)):
            return obj.__dict__
        return obj.model_dump(mode="python")
    raise NotImplementedError(type(obj))


class MessageCodec:
    """Encode ``model`` instances (or dicts) and decode them back."""

    __slots__ = ("model", "_enc", "_dec", "_fast", "_validate")

    def __init__(self, model=None):
        self.model = model
        self._enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._dec = msgspec.msgpack.Decoder()
        self._fast = model is not None and _plain_fields(model)
        self._validate = model.model_validate if model is not None else None

    def encode(self, sample):
        model = self.model
        if type(sample) is not model:
            if isinstance(sample, dict):
                sample = model.model_validate(sample)
            elif not isinstance(sample, model):
                raise TypeError(
                    f"expected a {model.__name__} instance or a dict, got {type(sample).__name__}")
        try:
            if self._fast and type(sample) is model:
                return self._enc.encode(sample.__dict__)
            return self._enc.encode(sample)
        except (TypeError, NotImplementedError, msgspec.EncodeError):
            # a field type msgspec does not know (e.g. pydantic URL types)
            return self._enc.encode(sample.model_dump(mode="json"))

    def decode(self, data):
        obj = self._dec.decode(data)
        if self._validate is None:
            return obj
        return self._validate(obj)
