"""Which audio layout the embedded default should train in (issue 20, item 3): ``python -m benchmarks.layout_ablation``.

Live input needs the interleaved layout (audio inside the video block, 2 s chunks: Qwen2.5-Omni's native
``use_audio_in_video``) and per-window log-mel features (``audio_features="window"``); the processor's default is
the separate layout with whole-clip features. For each setting below and each seed, the tiny preset is trained as
``python train.py`` trains it (its generated clips, its arguments) plus ``--audio_layout`` / ``--audio_features``,
then evaluated on fresh generated clips (another seed, all test) twice: in the layout it was trained on, and in
live's layout (interleaved, window). Accuracy is the label scores' top label (4 labels, chance 0.25) and the greedy
answer's first label. Writes ``OUT/summary.json`` and prints the table (mean +- std over seeds); a rerun skips
what is done (trained folders, evaluations kept in each folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from affectverse.data.readers import load_manifest
from affectverse.default.clips import generate_clips
from affectverse.inference.engine import MODALITIES, Engine, Setting, load_model
from affectverse.training import run as training_run
from processing_affectverse import AffectVerseProcessor, extract_labels

logger = logging.getLogger(__name__)

SETTINGS = {"separate-clip": ("separate", "clip"), "interleaved-clip": ("interleaved", "clip"),
            "interleaved-window": ("interleaved", "window")}
LIVE = ("interleaved", "window")


def train(out: Path, name: str, seed: int, layout: str, features: str) -> Path:
    folder = out / f"{name}-s{seed}"
    if not (folder / "results.json").is_file():
        training_run.main(["--output_dir", str(folder), "--seed", str(seed), "--audio_layout", layout,
                           "--audio_features", features, "--manifest", str(out / "train_clips" / "manifest.csv"),
                           "--generate_clips", "120", "--generation_eval_samples", "0"])
    return folder


def accuracy(folder: Path, rows: list[dict], labels: list[str], layout: str, features: str) -> dict:
    """Accuracies of the model in ``folder`` read in this layout (kept in the folder: a rerun reads them back)."""
    kept = folder / f"layout_eval_{layout}_{features}_{len(rows)}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    model, trained = load_model(str(folder), "cpu", torch.float32)
    processor = AffectVerseProcessor.from_model_config(model.config, trained, audio_layout=layout,
                                                       audio_features=features)
    engine = Engine(model, processor, max_new_tokens=16, batch_size=8, num_workers=0, labels=labels)
    setting = Setting(MODALITIES["avt"])
    scored = greedy = n = 0
    for _, batch_rows, results in engine.run(engine.batches([(setting, row) for row in rows])):
        for row, result in zip(batch_rows, results):
            n += 1
            if result["status"] != "ok":
                continue
            scored += result["label"] == row["emotion"]
            greedy += (extract_labels(result["answer"]) or [None])[0] == row["emotion"]
    result = {"label_score_accuracy": scored / n, "greedy_accuracy": greedy / n, "n": n}
    kept.write_text(json.dumps(result) + "\n")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/layout_ablation")
    parser.add_argument("--seeds", default="42,0,1,2", help="42: train.py's own default seed")
    parser.add_argument("--n-eval", type=int, default=200, help="fresh clips evaluated (all test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    manifest = out / "eval_clips" / "manifest.csv"
    if not manifest.is_file():
        generate_clips(manifest.parent, n_clips=args.n_eval, seed=1234, val_fraction=0.0, test_fraction=1.0)
    rows = [dict(r) for r in load_manifest(manifest, split="test")]
    labels = sorted({r["emotion"] for r in rows})
    results = {}
    for name, (layout, features) in SETTINGS.items():
        for seed in seeds:
            folder = train(out, name, seed, layout, features)
            own = accuracy(folder, rows, labels, layout, features)
            live = own if (layout, features) == LIVE else accuracy(folder, rows, labels, *LIVE)
            results[f"{name}-s{seed}"] = {"setting": name, "seed": seed, "own": own, "live": live}
            print(f"{name} seed {seed}: own {own}, live {live}", flush=True)
    summary = {}
    for name in SETTINGS:
        runs = [r for r in results.values() if r["setting"] == name]
        summary[name] = {f"{where}_{metric}": (statistics.mean(r[where][metric] for r in runs),
                                               statistics.pstdev(r[where][metric] for r in runs))
                         for where in ("own", "live") for metric in ("label_score_accuracy", "greedy_accuracy")}
    (out / "summary.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=2) + "\n")
    print("| trained in | own layout: label scores | own: greedy | live layout: label scores | live: greedy |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        cells = [f"{s[k][0]:.3f} +- {s[k][1]:.3f}" for k in ("own_label_score_accuracy", "own_greedy_accuracy",
                                                               "live_label_score_accuracy", "live_greedy_accuracy")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
