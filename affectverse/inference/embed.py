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
that holds its tensors; a rerun skips recorded clips; at the end every recorded clip is gathered into ``FILE``
(``.safetensors``: keys ``"{i}.{kind}"``, metadata ``names`` = the JSON list of clip names; ``.parquet``: one row
per clip, each kind a flat float list with its ``{kind}_shape``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from affectverse.inference.engine import Engine, to_device

KINDS = ("belief_tokens", "belief_embeddings", "video_hidden", "audio_hidden", "answer_hidden")
FORMATS = (".safetensors", ".parquet")


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


def write_part(out, names: list[str], vectors: list[dict]) -> str:
    """One batch's tensors in a new part file (temporary name, then renamed); returns its file name."""
    folder = parts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex[:12]}.safetensors"
    tensors = {f"{i}.{kind}": v for i, vec in enumerate(vectors) for kind, v in vec.items()}
    tmp = folder / f".{name}.tmp"
    save_file(tensors, str(tmp), metadata={"names": json.dumps(names)})
    os.replace(tmp, folder / name)
    return name


def gather(out, records: list[dict]) -> Path:
    """Write ``out`` from the store's ok records (in their order), reading each clip's tensors from its part."""
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
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        tensors = {f"{i}.{kind}": v for i, (_, vec) in enumerate(rows) for kind, v in vec.items()}
        save_file(tensors, str(tmp), metadata={"names": json.dumps([r["name"] for r, _ in rows]),
                                               "paths": json.dumps([r["path"] for r, _ in rows])})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = {"name": [r["name"] for r, _ in rows], "path": [r["path"] for r, _ in rows]}
        for kind in KINDS:
            table[kind] = [vec[kind].flatten().tolist() if kind in vec else None for _, vec in rows]
            table[f"{kind}_shape"] = [list(vec[kind].shape) if kind in vec else None for _, vec in rows]
        pq.write_table(pa.table(table), tmp)
    os.replace(tmp, out)
    return out


def read_embeddings(path) -> dict[str, dict[str, torch.Tensor]]:
    """``{clip name: {kind: tensor}}`` of a file ``gather`` wrote (either format)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

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
