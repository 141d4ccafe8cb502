"""Subclasses of the builtin types that the exact-type rules refuse (`type(x) is str`,
not isinstance): the hostile inputs of the envelope and engine tests."""


class StrSub(str):
    pass


class IntSub(int):
    pass


class DictSub(dict):
    pass
