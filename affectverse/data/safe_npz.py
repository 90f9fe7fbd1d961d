"""Read MER-UniBench ``.npz`` files without executing anything stored in them.

The label and output files hold pickled objects (a dict per key). ``np.load(..., allow_pickle=True)``
would run whatever code such a file names; here a restricted unpickler admits only the globals that
numpy needs to rebuild an object array, and the builtin containers and scalars it holds.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

# (module, name) pairs numpy's object-array pickles refer to; nothing else may be imported.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafeFileError(ValueError):
    """A file asked to import or call something outside the allowed set."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, source: str):
        super().__init__(fh)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeFileError(
                f"{self.source}: refuses to load global {module}.{name}; only plain numpy arrays, dicts, lists, "
                "strings and numbers are read from label files"
            )
        return super().find_class(module, name)


def _read_member(zf: zipfile.ZipFile, member: str, source: str):
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject:
            array = _RestrictedUnpickler(io.BytesIO(fh.read()), source).load()
            if not isinstance(array, np.ndarray):
                raise UnsafeFileError(f"{source}: member {member} is not an array")
            return array
    with zf.open(member) as fh:  # plain dtype: numpy reads it without pickle
        return np.lib.format.read_array(fh, allow_pickle=False)


def load_npz(path: str | Path) -> dict[str, object]:
    """Return ``{key: value}`` for an ``.npz`` file; 0-d object arrays are unwrapped to their Python object.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeFileError: the file references anything besides numpy arrays and builtin data.
        ValueError: the file is not a readable npz archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: not an .npz archive ({err})") from err
    out: dict[str, object] = {}
    with zf:
        for member in zf.namelist():
            key = member[:-4] if member.endswith(".npy") else member
            try:
                value = _read_member(zf, member, str(path))
            except UnsafeFileError:
                raise
            except Exception as err:  # corrupt header or pickle stream
                raise ValueError(f"{path}: cannot read member {member}: {err}") from err
            out[key] = value.item() if value.dtype.hasobject and value.ndim == 0 else value
    return out
