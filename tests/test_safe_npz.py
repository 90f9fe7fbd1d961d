"""affectverse.data.safe_npz: MER-UniBench label files are read without executing anything stored in them."""

from __future__ import annotations

import functools
import os
import pathlib
import pickle
import re
import subprocess
import zipfile

import numpy as np
import numpy.testing
import pytest

from affectverse.data.safe_npz import UnsafeFileError, load_npz
from tests.helpers import SHARED


class _Calls:
    """Unpickling this object calls ``func(*args)``; its stream names ``func``'s module and name first."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_object_npz(path, key, value):
    array = np.empty((), dtype=object)
    array[()] = value
    np.savez(path, **{key: array})


def _write_raw_member(path, stream: bytes, key="k"):
    """An .npz whose member ``key`` is a 0-d object array holding the pickle ``stream`` as it is."""
    with zipfile.ZipFile(path, "w") as zf, zf.open(f"{key}.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(stream)


def test_plain_label_dicts_round_trip(tmp_path):
    labels = {"sample_1": {"emo": "happy", "val": 1.5}, "sample_2": {"emo": 3, "val": -10}}
    _write_object_npz(tmp_path / "label.npz", "test_corpus", labels)
    np.savez(tmp_path / "plain.npz", filenames=np.array(["a", "b"]), scores=np.arange(3.0))
    assert load_npz(tmp_path / "label.npz") == {"test_corpus": labels}
    plain = load_npz(tmp_path / "plain.npz")
    assert plain["filenames"].tolist() == ["a", "b"] and plain["scores"].tolist() == [0.0, 1.0, 2.0]


def test_a_code_execution_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    _write_object_npz(path, "test_corpus", {"sample_1": _Calls(pathlib.Path.touch, pathlib.Path(marker))})
    # the file really carries the payload: numpy's own loader would run it
    with np.load(path, allow_pickle=True) as unsafe:
        unsafe["test_corpus"]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match=r"evil\.npz: refuses to load global pathlib"):
        load_npz(path)
    assert not marker.exists()


def test_a_raw_pickle_member_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "raw.npz"
    _write_raw_member(path, f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # protocol 0: os.system("touch")
    with pytest.raises(UnsafeFileError, match=r"raw\.npz: refuses to load global os\.system"):
        load_npz(path)
    assert not marker.exists()


# Each global a payload would need, in a payload that calls it to create the marker file where it can. The first
# global of each stream is the one named: the error must name it, so widening the allow-list by that one global
# (e.g. to "any numpy global", issue 23) fails here even where a later global of the stream is still refused.
def _touch_code(marker):
    return f"open({str(marker)!r}, 'w').close()"


REFUSED = {
    "numpy.testing._private.utils.runstring": lambda m: _Calls(numpy.testing.runstring, _touch_code(m), {}),
    "builtins.eval": lambda m: _Calls(eval, _touch_code(m)),
    "builtins.exec": lambda m: _Calls(exec, _touch_code(m)),
    "posix.system": lambda m: _Calls(os.system, f"touch {m}"),
    "subprocess.call": lambda m: _Calls(subprocess.call, ["touch", str(m)]),
    "functools.partial": lambda m: _Calls(functools.partial(os.system, f"touch {m}")),
    "builtins.getattr": lambda m: _Calls(getattr, pathlib.Path(m), "touch"),
    "builtins.__import__": lambda m: _Calls(__import__, "os"),
    "numpy.load": lambda m: _Calls(np.load, str(m)),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_refused_global_is_named_and_never_called(tmp_path, name):
    marker = tmp_path / "ran"
    stream = pickle.dumps(REFUSED[name](marker), protocol=4)
    assert name.rsplit(".", 1)[1].encode() in stream  # the stream does name it
    path = tmp_path / "evil.npz"
    _write_raw_member(path, stream)
    with pytest.raises(UnsafeFileError, match=rf"evil\.npz: refuses to load global {re.escape(name)};"):
        load_npz(path)
    assert not marker.exists()


def test_a_numpy_testing_helper_that_executes_a_string_is_refused_inside_a_label_dict(tmp_path):
    """Issue 23's hole: numpy.testing.runstring exec()s its argument; hidden in a label dict it still never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "label.npz"
    _write_object_npz(path, "test_corpus", {"sample_1": {"emo": _Calls(numpy.testing.runstring, _touch_code(marker),
                                                                        {}), "val": 1.0}})
    with pytest.raises(UnsafeFileError, match="numpy.testing._private.utils.runstring"):
        load_npz(path)
    assert not marker.exists()


@pytest.mark.parametrize("core", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_the_globals_numpy_pickles_need_still_load(tmp_path, core):
    """What object arrays pickle: _reconstruct, ndarray, dtype and scalar, as numpy 2 names them and as numpy 1.x
    (which wrote MER-UniBench's files) named them; numpy scalars and arrays inside the dicts come back."""
    labels = {"s1": {"emo": "happy", "val": np.float64(1.5), "scores": np.arange(3.0)}, "s2": {"emo": 3, "val": -2}}
    array = np.empty((), dtype=object)
    array[()] = labels
    stream = pickle.dumps(array, protocol=3)  # np.save's protocol in numpy 1.x: GLOBAL opcodes, "module\nname"
    assert b"cnumpy._core.multiarray\nscalar\n" in stream and b"cnumpy._core.multiarray\n_reconstruct\n" in stream
    stream = stream.replace(b"cnumpy._core.multiarray\n", f"c{core}\n".encode())
    _write_raw_member(tmp_path / "label.npz", stream, key="test_corpus")
    loaded = load_npz(tmp_path / "label.npz")["test_corpus"]
    assert loaded["s2"] == {"emo": 3, "val": -2} and loaded["s1"]["emo"] == "happy"
    assert loaded["s1"]["val"] == 1.5 and isinstance(loaded["s1"]["val"], np.float64)
    assert loaded["s1"]["scores"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("bad", ["missing.npz", "not_a_zip.npz"])
def test_missing_or_corrupt_files_name_the_file(tmp_path, bad):
    path = tmp_path / bad
    if bad == "not_a_zip.npz":
        path.write_bytes(b"garbage")
    with pytest.raises((FileNotFoundError, ValueError), match=bad.replace(".", r"\.")):
        load_npz(path)


def test_the_shared_label_files_load():
    path = SHARED / "merunibench" / "labels" / "meld-process" / "label.npz"
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared is only beside the project's own checkout)")
    corpus = load_npz(path)["test_corpus"]
    assert len(corpus) == 2610 and corpus["test_dia0_utt0"] == {"emo": 6, "val": -10}
