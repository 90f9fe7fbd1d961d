"""``affectverse embed``: per clip, the model's emotion representations, written as safetensors or parquet.

For each clip (one prompt forward, beliefs injected as at inference):

- ``belief_tokens`` `(n_b, w)`: the EWM's belief tokens before the up-projection (section 3.4, Eq. 19);
- ``belief_embeddings`` `(n_b, d)`: the same after the up-projection and its norm, as injected (Eq. 20);
- ``video_hidden`` / ``audio_hidden`` `(d,)`: the final hidden state (after the last norm) averaged over the
  clip's video / audio tokens (absent when the clip has no such modality);
- ``answer_hidden`` `(d,)`: the final hidden state at the answer position (the last prompt token, whose
  ``lm_head`` gives the first answer token's logits).

Batched and resumable on the shared engine (:func:`affectverse.inference.engine.predict_to_store`): the prediction store
``FILE.jsonl`` records each clip and the part file (``FILE.parts/*.safetensors``, written atomically per batch)
that holds its tensors; a rerun skips recorded clips; at the end every clip the store holds for the setting (this
command's and earlier ones') is gathered into ``FILE``, written atomically (``.safetensors``: keys
``"{i}.{kind}"``, metadata ``names`` = the JSON list of clip names; ``.parquet``: one row per clip, each kind a flat
float list with its ``{kind}_shape``). Both formats carry ``format: affectverse-embeddings`` and the run's id in
their metadata: the record by which ``embed`` knows its own file (:func:`is_embeddings`) and refuses any other.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from affectverse import ownership
from affectverse.inference.engine import Engine, non_finite, to_device
from affectverse.inference.store import PredictionStore, is_store

KINDS = ("belief_tokens", "belief_embeddings", "video_hidden", "audio_hidden", "answer_hidden")
FORMATS = (".safetensors", ".parquet")
FORMAT = "affectverse-embeddings"
PARTS_KIND = "embed"  # the record of FILE.parts/
REMEDY = "--overwrite to replace it and its embeddings"


class _Capture:
    """Forward hooks on the EWM's up-projection (its input), the EWM (its output) and the language model (its
    last call: the pass over the whole prompt)."""

    def __init__(self, model):
        self.values: dict = {}
        self.handles = [model.model.language_model.register_forward_hook(self._store("lm"))]
        if model.ewm is not None:
            self.handles.append(model.ewm.register_forward_hook(self._store("ewm")))
            self.handles.append(model.ewm.up.register_forward_hook(
                lambda module, args, output: self.values.__setitem__("up_in", args[0])))

    def _store(self, key):
        return lambda module, args, output: self.values.__setitem__(key, output)

    def close(self):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def embed_batch(model, batch) -> list[dict[str, torch.Tensor]]:
    """Per row of a left-padded prompt batch, ``{kind: float32 CPU tensor}`` (see the module docstring)."""
    batch = to_device(batch, model)
    capture = _Capture(model)
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1)
    finally:
        capture.close()
    hidden = capture.values["lm"].last_hidden_state  # (B, L, d)
    if not torch.isfinite(hidden).all():
        raise non_finite("hidden states", model)
    ids, cfg = batch["input_ids"], model.config
    if hidden.shape[:2] != ids.shape:
        raise RuntimeError(f"the language model saw {tuple(hidden.shape[:2])} tokens for a prompt of "
                           f"{tuple(ids.shape)}: embed needs the uncompacted inference layout")
    ewm = capture.values.get("ewm")
    rows = []
    for b in range(ids.shape[0]):
        row = {"answer_hidden": hidden[b, -1]}
        for kind, token in (("video_hidden", cfg.video_token_id), ("audio_hidden", cfg.audio_token_id)):
            mask = ids[b] == token
            if mask.any():
                row[kind] = hidden[b, mask].mean(0)
        if ewm is not None and ewm.beliefs is not None:
            n = int(ewm.n_beliefs[b])
            row["belief_embeddings"] = ewm.beliefs[b, :n]
            if "up_in" in capture.values:
                row["belief_tokens"] = capture.values["up_in"][b, :n]
        rows.append({k: v.detach().float().cpu().contiguous() for k, v in row.items()})
    return rows


class EmbedEngine(Engine):
    """An :class:`Engine` whose result per clip is ``{"status": "ok", "vectors": {kind: tensor}}``."""

    def generate(self, batch):
        return (embed_batch(self.model, batch),)

    def fields(self, vectors) -> dict:
        return {"vectors": vectors}


def parts_dir(out) -> Path:
    return Path(f"{out}.parts")


def store_path(out) -> Path:
    return Path(f"{out}.jsonl")


def run_id(record: dict) -> str:
    """A short id of a run's settings (the store header's ``run``), written into the output's metadata."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_metadata(path) -> dict:
    """The metadata of an embeddings file (either format); {} when it has none or is not readable as one."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def is_embeddings(path) -> bool:
    """Whether ``path`` is a file ``affectverse embed`` wrote (its metadata says so)."""
    try:
        return file_metadata(path).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - any file that does not read as one of ours is not ours
        return False


class Outputs:
    """FILE, FILE.jsonl and FILE.parts/ of one ``embed --out FILE``: checked before anything runs (each is this
    command's own or absent; FILE holds this run's embeddings, or ``overwrite`` replaces it), set aside with
    ``overwrite`` and dropped only once the new run writes its first batch (:meth:`begin`), put back if it fails
    before that (:meth:`restore`)."""

    def __init__(self, out, run: dict, overwrite: bool = False):
        self.out, self.run, self.overwrite = Path(out), run_id(run), overwrite
        self.paths = [self.out, store_path(out), parts_dir(out)]
        ownership.check_file(self.out, is_embeddings, "embed")
        ownership.check_file(self.paths[1], is_store, "embed", option="--out (its progress file)")
        ownership.check_folder(self.paths[2], PARTS_KIND, option="--out (its parts folder)")
        ownership.Lock(self.paths[1]).check()
        if not overwrite:  # other settings: the progress file says which
            PredictionStore(self.paths[1], run, ("path",), readonly=True, remedy=REMEDY)
        if not overwrite and self.out.exists() and file_metadata(self.out).get("run") != self.run:
            raise ownership.OwnershipError(f"--out {self.out} holds embeddings of another run (other model or "
                                           "settings); pass --overwrite to replace it with its progress file and "
                                           "parts, or choose another --out")
        self.aside: list[tuple[Path, Path]] = []

    def set_aside(self):
        """With ``overwrite``: move the earlier outputs out of the way (renamed, not deleted yet)."""
        if not self.overwrite:
            return
        for path in self.paths:
            if path.exists():
                hidden = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:8]}")
                path.rename(hidden)
                self.aside.append((path, hidden))

    def begin(self):
        """The first batch went through: the earlier outputs go for good."""
        for _, hidden in self.aside:
            ownership.remove_own(hidden.parent, [hidden.name])
        self.aside = []

    def restore(self):
        for path, hidden in self.aside:
            if not path.exists():
                hidden.rename(path)
        self.aside = []


def write_part(out, names: list[str], vectors: list[dict]) -> str:
    """One batch's tensors in a new part file (written atomically); returns its file name."""
    folder = parts_dir(out)
    ownership.claim_folder(folder, PARTS_KIND, option="--out (its parts folder)")  # created at the first batch
    name = f"part-{uuid.uuid4().hex[:12]}.safetensors"
    tensors = {f"{i}.{kind}": v for i, vec in enumerate(vectors) for kind, v in vec.items()}
    with ownership.atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp), metadata={"names": json.dumps(names)})
    return name


def gather(out, records: list[dict], run: dict | None = None, stored: list[dict] | None = None) -> Path:
    """Write ``out`` from the store's ok records (in their order), reading each clip's tensors from its part, with
    the metadata that marks it as this run's. ``stored``: every record of the store; part files none of them names
    (a batch cut off before it was recorded) are removed."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: the output must end in {' or '.join(FORMATS)}")
    parts: dict[str, dict] = {}
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        part = parts.setdefault(record["part"], load_file(str(parts_dir(out) / record["part"])))
        prefix = f"{record['index']}."
        rows.append((record, {k[len(prefix):]: v for k, v in part.items() if k.startswith(prefix)}))
    meta = {"format": FORMAT, "run": run_id(run) if run is not None else "",
            "names": json.dumps([r["name"] for r, _ in rows]), "paths": json.dumps([r["path"] for r, _ in rows])}
    with ownership.atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            tensors = {f"{i}.{kind}": v for i, (_, vec) in enumerate(rows) for kind, v in vec.items()}
            save_file(tensors, str(tmp), metadata=meta)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = {"name": [r["name"] for r, _ in rows], "path": [r["path"] for r, _ in rows]}
            for kind in KINDS:
                table[kind] = [vec[kind].flatten().tolist() if kind in vec else None for _, vec in rows]
                table[f"{kind}_shape"] = [list(vec[kind].shape) if kind in vec else None for _, vec in rows]
            schema_meta = {k: v for k, v in meta.items() if k in ("format", "run")}
            pq.write_table(pa.table(table).replace_schema_metadata(schema_meta), tmp)
    folder = parts_dir(out)
    if stored is not None and folder.is_dir():
        named = {record["part"] for record in stored if record.get("part")}
        ownership.remove_own(folder, [p.name for p in folder.glob("part-*.safetensors") if p.name not in named])
    return out


def read_embeddings(path) -> dict[str, dict[str, torch.Tensor]]:
    """``{clip name: {kind: tensor}}`` of a file ``gather`` wrote (either format)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as fh:
            names = json.loads(fh.metadata()["names"])
        tensors = load_file(str(path))
        return {name: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
                for i, name in enumerate(names)}
    import pyarrow.parquet as pq

    out = {}
    for row in pq.read_table(path).to_pylist():
        out[row["name"]] = {k: torch.tensor(row[k]).view(row[f"{k}_shape"]) for k in KINDS if row[k] is not None}
    return out
