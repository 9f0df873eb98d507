# Plain data through rings without the pickler (SPEC §3.1).  Included by
# _core.pyx.
#
# An item made only of None, bool, int (64-bit), float, str, bytes, and
# tuples, lists and dicts of these is written by the encoder below as
# pickle protocol 5 opcodes and read back by the decoder below.  Both skip
# what a pickle.dumps/loads pair spends most of a small item's time on:
# building and freeing a Pickler and an Unpickler, their memo tables and an
# output buffer (dumps + loads of (i, 3.14, 'abc') ~400 ns here, this pair
# under 100 ns).  The bytes are a valid pickle that pickle.loads reads to an
# equal object, so every other reader (latest(), a custom decoder) may treat
# them as one.
#
# Exact types only: a subclass (IntEnum, a str subclass, namedtuple) may
# pickle differently, so it, and anything else, goes to the real pickler.
# The encoder writes no memo, so a list or dict met twice in one item (its
# identity would be lost, and a list holding itself would never end) makes
# it give up too.  Repeated immutable values (the same str twice) arrive as
# equal, not identical, objects, as after any copy.

from cpython.object cimport PyObject
from libc.stdint cimport int32_t

cdef extern from "Python.h":
    # raw new references (NULL on error), so the decoder's stack owns them
    PyObject *_new_int "PyLong_FromLongLong"(long long)
    PyObject *_new_float "PyFloat_FromDouble"(double)
    PyObject *_new_str "PyUnicode_DecodeUTF8"(const char *, Py_ssize_t, const char *)
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *, Py_ssize_t)
    PyObject *_new_tuple "PyTuple_New"(Py_ssize_t)
    void _tuple_set "PyTuple_SET_ITEM"(PyObject *, Py_ssize_t, PyObject *)  # steals
    PyObject *_new_list "PyList_New"(Py_ssize_t)
    int _list_append "PyList_Append"(PyObject *, PyObject *)
    PyObject *_new_dict "PyDict_New"()
    int _dict_set "PyDict_SetItem"(PyObject *, PyObject *, PyObject *)
    void _decref "Py_DECREF"(PyObject *)
    void _incref "Py_INCREF"(PyObject *)
    PyObject *_none "Py_None"
    PyObject *_true "Py_True"
    PyObject *_false "Py_False"
    bint _is_list "PyList_CheckExact"(PyObject *)
    bint _is_dict "PyDict_CheckExact"(PyObject *)
    void PyErr_Clear()
    # borrowed views of the values we encode
    long long PyLong_AsLongLongAndOverflow(object, int *) except? -1
    double PyFloat_AS_DOUBLE(object)
    bint PyUnicode_IS_ASCII(object)
    void *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    object PyUnicode_AsEncodedString(object, const char *, const char *)
    Py_ssize_t PyTuple_GET_SIZE(object)
    PyObject *_tuple_item "PyTuple_GET_ITEM"(object, Py_ssize_t)  # borrowed
    Py_ssize_t PyList_GET_SIZE(object)
    PyObject *_list_item "PyList_GET_ITEM"(object, Py_ssize_t)  # borrowed
    int PyDict_Next(object, Py_ssize_t *, PyObject **, PyObject **)
    Py_ssize_t PyDict_Size(object)

# pickle opcodes (Lib/pickle.py names)
cdef enum:
    _MARK = 0x28            # '('
    _STOP = 0x2e            # '.'
    _NONE = 0x4e            # 'N'
    _BININT = 0x4a          # 'J'  4-byte signed
    _BININT1 = 0x4b         # 'K'  1-byte unsigned
    _BININT2 = 0x4d         # 'M'  2-byte unsigned
    _BINFLOAT = 0x47        # 'G'  8-byte big-endian double
    _BINBYTES = 0x42        # 'B'  4-byte length
    _SHORT_BINBYTES = 0x43  # 'C'  1-byte length
    _BINUNICODE = 0x58      # 'X'  4-byte length, UTF-8
    _EMPTY_TUPLE = 0x29     # ')'
    _TUPLE = 0x74           # 't'
    _EMPTY_LIST = 0x5d      # ']'
    _APPENDS = 0x65         # 'e'
    _EMPTY_DICT = 0x7d      # '}'
    _SETITEMS = 0x75        # 'u'
    _PROTO = 0x80
    _FRAME = 0x95           # protocol 4+: a length hint, skipped
    _MEMOIZE = 0x94         # protocol 4+: skipped (no GET opcode is decoded)
    _TUPLE1 = 0x85
    _NEWTRUE = 0x88
    _NEWFALSE = 0x89
    _LONG1 = 0x8a
    _SHORT_BINUNICODE = 0x8c

    _PLAIN_DEPTH = 8        # nesting the encoder follows before giving up
    _PLAIN_SEEN = 64        # lists and dicts it tracks per item
    _PLAIN_BUF = 4096       # largest encoding (bytes) tried on the C stack
    _PLAIN_STACK = 64       # decoder stack kept on the C stack
    _PLAIN_MARKS = 16


cdef struct _Enc:
    uint8_t *p
    Py_ssize_t n
    Py_ssize_t cap
    int nseen
    void *seen[_PLAIN_SEEN]


cdef inline bint _put1(_Enc *e, uint8_t op):
    if e.n >= e.cap:
        return False
    e.p[e.n] = op
    e.n += 1
    return True


cdef inline bint _put_le(_Enc *e, uint8_t op, uint64_t v, int k):
    """op followed by the k low bytes of v, little-endian."""
    cdef int i
    if e.n + 1 + k > e.cap:
        return False
    e.p[e.n] = op
    for i in range(k):
        e.p[e.n + 1 + i] = <uint8_t>(v >> (8 * i))
    e.n += 1 + k
    return True


cdef inline bint _put_sized(_Enc *e, uint8_t short_op, uint8_t long_op, const char *s,
                            Py_ssize_t k):
    """A str or bytes body: 1-byte length if it fits, else 4-byte."""
    if k < 256:
        if not _put_le(e, short_op, <uint64_t>k, 1):
            return False
    elif k <= 0xffffffff:
        if not _put_le(e, long_op, <uint64_t>k, 4):
            return False
    else:
        return False
    if e.n + k > e.cap:
        return False
    memcpy(e.p + e.n, s, k)
    e.n += k
    return True


cdef bint _seen(_Enc *e, object o):
    """Track a list or dict; True if it was met before in this item (or
    there are too many to track)."""
    cdef void *p = <void *>o
    cdef int i
    for i in range(e.nseen):
        if e.seen[i] == p:
            return True
    if e.nseen == _PLAIN_SEEN:
        return True
    e.seen[e.nseen] = p
    e.nseen += 1
    return False


cdef bint _enc(_Enc *e, object o, int depth) except -1:
    """Append o's opcodes; False if o is not plain data or does not fit."""
    cdef type t = type(o)
    cdef long long v
    cdef int overflow = 0
    cdef double d
    cdef uint64_t bits
    cdef Py_ssize_t i, k
    cdef PyObject *key
    cdef PyObject *val
    if o is None:
        return _put1(e, _NONE)
    if t is int:
        v = PyLong_AsLongLongAndOverflow(o, &overflow)
        if overflow:
            return False
        if 0 <= v < 0x100:
            return _put_le(e, _BININT1, <uint64_t>v, 1)
        if 0 <= v < 0x10000:
            return _put_le(e, _BININT2, <uint64_t>v, 2)
        if -0x80000000 <= v <= 0x7fffffff:
            return _put_le(e, _BININT, <uint64_t>v, 4)
        # LONG1: a length byte (8), then two's complement little-endian
        if e.n + 10 > e.cap:
            return False
        e.p[e.n] = _LONG1
        e.p[e.n + 1] = 8
        for i in range(8):
            e.p[e.n + 2 + i] = <uint8_t>(<uint64_t>v >> (8 * i))
        e.n += 10
        return True
    if t is float:
        d = PyFloat_AS_DOUBLE(o)
        memcpy(&bits, &d, 8)
        if e.n + 9 > e.cap:
            return False
        e.p[e.n] = _BINFLOAT
        for i in range(8):  # big-endian
            e.p[e.n + 1 + i] = <uint8_t>(bits >> (56 - 8 * i))
        e.n += 9
        return True
    if t is str:
        if PyUnicode_IS_ASCII(o):
            return _put_sized(e, _SHORT_BINUNICODE, _BINUNICODE, <const char *>PyUnicode_DATA(o),
                              PyUnicode_GET_LENGTH(o))
        if PyUnicode_GET_LENGTH(o) > e.cap:
            return False
        # as pickle does: lone surrogates pass
        b = PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass")
        return _put_sized(e, _SHORT_BINUNICODE, _BINUNICODE, PyBytes_AS_STRING(b),
                          PyBytes_GET_SIZE(b))
    if t is bytes:
        return _put_sized(e, _SHORT_BINBYTES, _BINBYTES, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
    if t is bool:
        return _put1(e, _NEWTRUE if o is True else _NEWFALSE)
    if depth >= _PLAIN_DEPTH:
        return False
    if t is tuple:
        k = PyTuple_GET_SIZE(o)
        if k == 0:
            return _put1(e, _EMPTY_TUPLE)
        if k > 3 and not _put1(e, _MARK):
            return False
        for i in range(k):
            if not _enc(e, <object>_tuple_item(o, i), depth + 1):
                return False
        return _put1(e, _TUPLE if k > 3 else _TUPLE1 + k - 1)
    if t is list:
        if _seen(e, o) or not _put1(e, _EMPTY_LIST):
            return False
        k = PyList_GET_SIZE(o)
        if k == 0:
            return True
        if not _put1(e, _MARK):
            return False
        # no Python code runs while we encode, so the list cannot change
        for i in range(k):
            if not _enc(e, <object>_list_item(o, i), depth + 1):
                return False
        return _put1(e, _APPENDS)
    if t is dict:
        if _seen(e, o) or not _put1(e, _EMPTY_DICT):
            return False
        if PyDict_Size(o) == 0:
            return True
        if not _put1(e, _MARK):
            return False
        i = 0
        while PyDict_Next(o, &i, &key, &val):
            if not _enc(e, <object>key, depth + 1) or not _enc(e, <object>val, depth + 1):
                return False
        return _put1(e, _SETITEMS)
    return False


cdef Py_ssize_t _plain_dump(object o, uint8_t *buf, Py_ssize_t cap) except -2:
    """Encode o into buf; its length, or -1 if o is not plain data or its
    encoding would exceed cap bytes."""
    cdef _Enc e
    e.p = buf
    e.n = 0
    e.cap = cap
    e.nseen = 0
    if not (_put_le(&e, _PROTO, 5, 1) and _enc(&e, o, 0) and _put1(&e, _STOP)):
        return -1
    return e.n


cdef inline uint64_t _le(const uint8_t *p, int k):
    cdef uint64_t v = 0
    cdef int i
    for i in range(k):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef struct _Dec:
    PyObject **stk
    Py_ssize_t sp
    Py_ssize_t cap
    PyObject *local[_PLAIN_STACK]


cdef bint _push(_Dec *s, PyObject *o):
    """Push a new reference (NULL: a failed constructor, False)."""
    cdef PyObject **bigger
    cdef Py_ssize_t i
    if o == NULL:
        PyErr_Clear()
        return False
    if s.sp == s.cap:
        bigger = <PyObject **>PyMem_RawRealloc(NULL if s.stk == s.local else s.stk,
                                               2 * s.cap * sizeof(PyObject *))
        if bigger == NULL:
            _decref(o)
            return False
        if s.stk == s.local:
            for i in range(s.sp):
                bigger[i] = s.local[i]
        s.stk = bigger
        s.cap *= 2
    s.stk[s.sp] = o
    s.sp += 1
    return True


cdef object _NOT_PLAIN = object()


cdef object _plain_load(const uint8_t *p, Py_ssize_t n):
    """Decode what _plain_dump wrote; _NOT_PLAIN if ``p`` holds anything
    else (the caller then unpickles it the ordinary way).  Never reads past
    ``n`` bytes and never trusts them: they are in shared memory."""
    cdef _Dec s
    cdef Py_ssize_t marks[_PLAIN_MARKS]
    cdef int nmarks = 0
    cdef Py_ssize_t i = 2, k, m, j
    cdef uint8_t op
    cdef uint64_t bits
    cdef int64_t v
    cdef double d
    cdef PyObject *o
    cdef PyObject *c
    cdef object result
    if n < 3 or p[0] != _PROTO or p[1] != 5:
        return _NOT_PLAIN
    s.stk = s.local
    s.sp = 0
    s.cap = _PLAIN_STACK
    try:
        while i < n:
            op = p[i]
            i += 1
            if op == _BININT1 or op == _BININT2 or op == _BININT:
                k = 1 if op == _BININT1 else (2 if op == _BININT2 else 4)
                if i + k > n:
                    return _NOT_PLAIN
                v = <int64_t>_le(p + i, <int>k)
                if k == 4:
                    v = <int32_t>v
                i += k
                if not _push(&s, _new_int(v)):
                    return _NOT_PLAIN
            elif op == _BINFLOAT:
                if i + 8 > n:
                    return _NOT_PLAIN
                bits = 0
                for j in range(8):
                    bits = (bits << 8) | p[i + j]
                memcpy(&d, &bits, 8)
                i += 8
                if not _push(&s, _new_float(d)):
                    return _NOT_PLAIN
            elif op == _SHORT_BINUNICODE or op == _BINUNICODE or \
                    op == _SHORT_BINBYTES or op == _BINBYTES:
                k = 1 if op == _SHORT_BINUNICODE or op == _SHORT_BINBYTES else 4
                if i + k > n:
                    return _NOT_PLAIN
                m = <Py_ssize_t>_le(p + i, <int>k)
                i += k
                if m > n - i:
                    return _NOT_PLAIN
                if op == _SHORT_BINUNICODE or op == _BINUNICODE:
                    o = _new_str(<const char *>p + i, m, "surrogatepass")
                else:
                    o = _new_bytes(<const char *>p + i, m)
                i += m
                if not _push(&s, o):
                    return _NOT_PLAIN
            elif op == _NONE or op == _NEWTRUE or op == _NEWFALSE:
                o = _none if op == _NONE else (_true if op == _NEWTRUE else _false)
                _incref(o)
                if not _push(&s, o):
                    return _NOT_PLAIN
            elif op == _LONG1:
                if i + 1 > n or p[i] > 8 or p[i] == 0 or i + 1 + p[i] > n:
                    return _NOT_PLAIN
                k = p[i]
                bits = _le(p + i + 1, <int>k)
                if k < 8 and bits >> (8 * k - 1):  # sign-extend
                    bits |= ~(<uint64_t>0) << (8 * k)
                i += 1 + k
                if not _push(&s, _new_int(<int64_t>bits)):
                    return _NOT_PLAIN
            elif op == _MARK:
                if nmarks == _PLAIN_MARKS:
                    return _NOT_PLAIN
                marks[nmarks] = s.sp
                nmarks += 1
            elif op == _EMPTY_TUPLE:
                if not _push(&s, _new_tuple(0)):
                    return _NOT_PLAIN
            elif op == _TUPLE or _TUPLE1 <= op <= _TUPLE1 + 2:
                if op == _TUPLE:
                    if nmarks == 0:
                        return _NOT_PLAIN
                    nmarks -= 1
                    m = marks[nmarks]
                else:
                    # no popping below the open mark (pickle's stack fence)
                    m = s.sp - (op - _TUPLE1 + 1)
                    if m < (marks[nmarks - 1] if nmarks else 0):
                        return _NOT_PLAIN
                o = _new_tuple(s.sp - m)
                if o == NULL:
                    PyErr_Clear()
                    return _NOT_PLAIN
                for j in range(m, s.sp):
                    _tuple_set(o, j - m, s.stk[j])  # steals
                s.sp = m
                _push(&s, o)  # cannot fail: m < the old sp
            elif op == _EMPTY_LIST or op == _EMPTY_DICT:
                if not _push(&s, _new_list(0) if op == _EMPTY_LIST else _new_dict()):
                    return _NOT_PLAIN
            elif op == _APPENDS or op == _SETITEMS:
                if nmarks == 0:
                    return _NOT_PLAIN
                nmarks -= 1
                m = marks[nmarks]
                if m <= (marks[nmarks - 1] if nmarks else 0) or \
                        (op == _SETITEMS and (s.sp - m) % 2):
                    return _NOT_PLAIN
                c = s.stk[m - 1]
                if not (_is_list(c) if op == _APPENDS else _is_dict(c)):
                    return _NOT_PLAIN
                j = m
                while j < s.sp:
                    if op == _APPENDS:
                        k = _list_append(c, s.stk[j])
                        j += 1
                    else:
                        k = _dict_set(c, s.stk[j], s.stk[j + 1])
                        j += 2
                    if k < 0:
                        PyErr_Clear()
                        return _NOT_PLAIN
                while s.sp > m:
                    s.sp -= 1
                    _decref(s.stk[s.sp])
            elif op == _MEMOIZE:
                # pickle.dumps memoizes what it writes; without a GET opcode
                # (never decoded here: it makes the item not plain) the memo
                # is never read, so a plain item pickled by the pickler (a
                # large str or bytes in a blob) decodes here, in one copy.
                # As pickle: an error with nothing above the last mark
                if s.sp == 0 or (nmarks and s.sp <= marks[nmarks - 1]):
                    return _NOT_PLAIN
            elif op == _FRAME:
                # as pickle: the frame's bytes must all be there
                if i + 8 > n or _le(p + i, 8) > <uint64_t>(n - i - 8):
                    return _NOT_PLAIN
                i += 8
            elif op == _STOP:
                if s.sp != 1 or nmarks or i != n:
                    return _NOT_PLAIN
                result = <object>s.stk[0]  # a new reference for Cython
                return result
            else:
                return _NOT_PLAIN
        return _NOT_PLAIN
    finally:
        while s.sp > 0:
            s.sp -= 1
            _decref(s.stk[s.sp])
        if s.stk != s.local:
            PyMem_RawFree(s.stk)


# for tests: the encoder and decoder on their own
def _plain_dumps(obj, Py_ssize_t cap=_PLAIN_BUF):
    """obj's plain-data pickle, or None if the ring would pickle it."""
    cdef uint8_t buf[_PLAIN_BUF]
    cdef Py_ssize_t n
    if cap > _PLAIN_BUF:
        cap = _PLAIN_BUF
    n = _plain_dump(obj, buf, cap)
    return None if n < 0 else PyBytes_FromStringAndSize(<const char *>buf, n)


def _plain_loads(data):
    """Decode a plain-data pickle; raises ValueError for anything else."""
    cdef Py_buffer b
    PyObject_GetBuffer(data, &b, 0)
    try:
        out = _plain_load(<const uint8_t *>b.buf, b.len)
    finally:
        PyBuffer_Release(&b)
    if out is _NOT_PLAIN:
        raise ValueError("not a plain-data pickle")
    return out
