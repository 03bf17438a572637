"""How LangGraph's namespaces and keys map to AMS keys, and back: a reversible encoding.

An item ``(("users", "alice"), "pref/1")`` is stored under the AMS key ``lg/users/alice/:pref=2F1``:

- ``lg/``, then each namespace label followed by ``/``, then ``:`` and the item's key;
- in labels and keys, ``A-Z a-z 0-9 _ - . @ +`` stand for themselves and every other character is its UTF-8
  bytes written ``=XX`` (two upper-case hex digits), so ``/``, ``:`` and ``=`` never appear unescaped.

So any label LangGraph allows (a non-empty string without ``.``) and any key round-trip, as long as the
whole AMS key fits AMS's 512 characters. Every label's segment ends in ``/``, so the namespace prefix
``("users",)`` is the key prefix ``lg/users/``, which ``("users2",)`` (``lg/users2/``) does not share; the
namespace is what comes before the first ``:``, which is how the server lists namespaces
(``POST /v1/records/prefixes`` with delimiter ``:``). AMS's key grammar holds: segments are never empty,
``.`` or ``..`` (labels have no dots; the key's segment starts with ``:``), and the last segment is never
``history``.
"""

from __future__ import annotations

import string

ROOT = "lg/"
NAMESPACE_END = ":"
_PLAIN = frozenset(string.ascii_letters + string.digits + "_-.@+")


def encode_part(text: str) -> str:
    """A label or key as AMS key characters (see the module's docstring)."""
    return "".join(char if char in _PLAIN else "".join(f"={byte:02X}" for byte in char.encode("utf-8"))
                   for char in text)


def decode_part(text: str) -> str:
    """The label or key ``encode_part`` made ``text`` from; ValueError if it could not have."""
    raw = bytearray()
    position = 0
    while position < len(text):
        char = text[position]
        if char == "=":
            raw.append(int(text[position + 1:position + 3], 16))
            position += 3
        elif char in _PLAIN:
            raw += char.encode()
            position += 1
        else:
            raise ValueError(f"{text!r} is not an encoded label or key")
    return raw.decode("utf-8")


def namespace_prefix(namespace: tuple[str, ...]) -> str:
    """The AMS key prefix of every item in ``namespace`` and in the namespaces under it."""
    return ROOT + "".join(encode_part(label) + "/" for label in namespace)


def item_key(namespace: tuple[str, ...], key: str) -> str:
    return namespace_prefix(namespace) + NAMESPACE_END + encode_part(key)


def parse_namespace(prefix: str) -> tuple[str, ...]:
    """The namespace whose `namespace_prefix` is ``prefix``; ValueError if there is none."""
    if not prefix.startswith(ROOT) or not prefix.endswith("/"):
        raise ValueError(f"{prefix!r} is not a LangGraph namespace's key prefix")
    return tuple(decode_part(label) for label in prefix[len(ROOT):-1].split("/")) if prefix != ROOT else ()


def parse_item_key(ams_key: str) -> tuple[tuple[str, ...], str]:
    """The (namespace, key) stored under ``ams_key``; ValueError if it is not an item's key."""
    prefix, end, key = ams_key.partition(NAMESPACE_END)
    if not end:
        raise ValueError(f"{ams_key!r} is not a LangGraph item's key")
    return parse_namespace(prefix), decode_part(key)
