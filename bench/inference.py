"""Inference latency of one configuration: the extracted static sub-network against a natively
built static model of identical shape, the slimmable model at that width, and the ONNX Runtime
export; batch 1 and batch 32, interleaved rounds, median.

Usage: python bench/inference.py [--model mobilenet_v2] [--width 0.5] [--resolution 160]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from common import Parser, emit, image_models, interleaved, positive, program, ratio_quartiles

from mutualnet import create_model
from mutualnet.export import fold_batchnorm


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--model", default="mobilenet_v2",
                        help="a registered image model (default mobilenet_v2)")
    parser.add_argument("--width", type=positive(float), default=0.5,
                        help="the sub-network's width, within 0.25-1.0 (default 0.5)")
    parser.add_argument("--resolution", type=positive(int), default=160,
                        help="input side in pixels (default 160)")
    parser.add_argument("--rounds", type=positive(int), default=30,
                        help="interleaved rounds at batch 1 (default 30); batch 32 runs a "
                        "third as many, at least 5")
    args = parser.parse_args()
    image_models(parser, args.model)
    device = torch.device("cpu")
    w, r = args.width, args.resolution
    slim = create_model(args.model, width_range=(0.25, 1.0)).eval()
    slim.set_config(w, r)
    extracted = slim.subnet(w, r).eval()
    native = create_model(args.model, width_range=(w, w)).subnet(w).eval()
    results = []
    import onnxruntime as ort

    for batch in (1, 32):
        x = torch.randn(batch, 3, r, r)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            torch.onnx.export(fold_batchnorm(slim.subnet(w, r).eval()), (x,), str(path),
                              input_names=["images"], dynamo=False)
            options = ort.SessionOptions()
            # without this, onnxruntime's idle threads keep spinning after each run and slow
            # down whichever contender the interleaved rounds run next
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"images": x.numpy()}
            with torch.inference_mode():
                samples: dict = {}
                t = interleaved({
                    "extracted": lambda: extracted(x),
                    "native": lambda: native(x),
                    "slimmable": lambda: slim(x),
                    "onnxruntime": lambda: session.run(None, feed),
                }, rounds=args.rounds if batch == 1 else max(5, args.rounds // 3), warmup=3,
                    device=device, samples=samples)
        row = {"batch": batch, **{f"{k}_ms": round(v * 1000, 3) for k, v in t.items()},
               "extracted_over_native": round(t["extracted"] / t["native"], 3),
               "extracted_over_native_quartiles": ratio_quartiles(samples, "extracted", "native"),
               "slimmable_over_native": round(t["slimmable"] / t["native"], 3),
               "onnxruntime_over_native": round(t["onnxruntime"] / t["native"], 3)}
        print(row, flush=True)
        results.append(row)
    emit({"benchmark": "inference", "model": args.model, "width": w, "resolution": r,
          "results": results, "targets": {"extracted_over_native": 1.03}})


if __name__ == "__main__":
    program(main)
