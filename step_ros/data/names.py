"""Names that come from data or arguments (task columns, splits, recordings, shard files) and
become file or folder names: each must be one plain path component inside its folder."""

from __future__ import annotations

MAX_NAME_BYTES = 100  # leaves room for the prefixes and suffixes the tools add (255 in all)


def safe_name(name: object, *, what: str, error: type[Exception] = ValueError) -> str:
    """`name` when it is one plain path component, else `error` naming `what` and the value.

    Refused: non-strings, '', '.', '..', anything with '/', '\\', NUL or another control
    character, leading or trailing spaces, and names longer than MAX_NAME_BYTES in UTF-8.
    """
    reason = None
    if not isinstance(name, str):
        reason = f'a {type(name).__name__}, not a string'
    elif name.strip() in ('', '.', '..'):
        reason = 'empty, "." or ".."'
    elif '/' in name or '\\' in name:
        reason = 'contains a path separator'
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = 'contains a control character'
    elif name != name.strip():
        reason = 'starts or ends with a space'
    elif len(name.encode('utf-8', 'surrogatepass')) > MAX_NAME_BYTES:
        reason = f'longer than {MAX_NAME_BYTES} bytes'
    if reason is not None:
        shown = repr(name)[:120]
        raise error(f'{what} {shown}: not usable as a file or folder name ({reason}); use '
                    'letters, digits, "_", "-" or "."')
    return name
