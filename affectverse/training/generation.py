"""Greedy answers on held-out samples through the prediction engine, and the closed-set accuracy they score."""

from __future__ import annotations

import torch

from affectverse.inference.engine import MODALITIES, Engine, Setting
from affectverse.scoring.scores import map_to_label_set
from processing_affectverse import extract_labels


@torch.no_grad()
def greedy_answers(model, processor, rows: list[dict], max_new_tokens: int, batch_size: int = 4) -> list[dict]:
    """One engine result per row, in order: ``{"status": "ok", "answer", ...}`` or ``{"status": "error",
    "reason", ...}`` (a clip that fails to decode). Greedy, audio + video + text, media decoded in this process;
    the model is put in eval mode."""
    model.eval()
    engine = Engine(model, processor, max_new_tokens, batch_size, num_workers=0)
    results = []
    for _, _, chunk in engine.run(engine.batches([(Setting(MODALITIES["avt"]), row) for row in rows])):
        results.extend(chunk)
    return results


def generation_accuracy(model, processor, dataset, label_sets, n_samples: int, max_new_tokens: int,
                        batch_size: int = 4) -> dict | None:
    """Greedy answers for the first ``n_samples`` held-out emotion samples, mapped onto their closed label set.

    A clip that fails counts as wrong."""
    rows = [r for r in dataset if r["task"] == "emotion" and r["benchmark"] in label_sets][:n_samples]
    if not rows:
        return None
    correct, examples = 0, []
    for row, result in zip(rows, greedy_answers(model, processor, rows, max_new_tokens, batch_size)):
        label_set = label_sets[row["benchmark"]]
        truth = map_to_label_set([row["emotion"].lower()], label_set)
        answer = result.get("answer", "")
        guess = map_to_label_set(extract_labels(answer), label_set) if result["status"] == "ok" else None
        correct += result["status"] == "ok" and guess == truth
        examples.append({"name": row["name"], "label": truth, "answer": answer, "prediction": guess,
                         **({"error": result["reason"]} if result["status"] == "error" else {})})
    sets = {tuple(label_sets[r["benchmark"]]) for r in rows}
    label_set = list(sets.pop()) if len(sets) == 1 else None  # for the chance level, when there is one set
    return {"accuracy": correct / len(rows), "n": len(rows), "label_set": label_set, "examples": examples[:8]}
