"""``quantized.pt``: the folded, fine-tuned float weights of a model and its calibrated plan.

Read with ``weights_only=True``: the file holds tensors, strings and the plan as JSON-like data,
so loading it runs no code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import write_bytes
from hawq_onnx.io.plan import Plan, plan_from_json

CHECKPOINT_FORMAT = "hawq-onnx-quantized"
CHECKPOINT_VERSION = 1


@dataclass
class QuantizedCheckpoint:
    model: str                          # the model reference it was made from
    fingerprint: str                    # of the folded model
    state_dict: dict[str, torch.Tensor]  # folded float weights after fine-tuning
    plan: Plan                          # calibrated

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically."""
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": self.model,
                   "fingerprint": self.fingerprint, "state_dict": self.state_dict, "plan": self.plan.to_json()}
        # Saved through memory: torch names the archive's records after the file, and the
        # temporary file's random name would make equal checkpoints differ byte for byte.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return write_bytes(path, buffer.getvalue())


def load_quantized(path: str | Path, fingerprint: str | None = None) -> QuantizedCheckpoint:
    """Read quantized.pt; with ``fingerprint``, check it belongs to that (folded) model."""
    p = Path(path)
    where = f"quantized checkpoint {p}"
    if not p.is_file():
        raise HawqError(f"{where} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HawqError(f"{where} is not a readable torch file ({exc.__class__.__name__}); "
                        "write it with `hawq-onnx finetune`") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise HawqError(f"{where} is not a hawq-onnx quantized checkpoint (run `hawq-onnx finetune`)")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise HawqError(f"{where} has version {obj.get('version')}, this hawq-onnx reads {CHECKPOINT_VERSION}")
    state = obj.get("state_dict")
    if (not isinstance(obj.get("model"), str) or not isinstance(obj.get("fingerprint"), str)
            or not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise HawqError(f"{where} is malformed (model, fingerprint or state_dict missing)")
    plan = plan_from_json(obj.get("plan"), f"{where}: plan", obj["fingerprint"])
    if fingerprint is not None and obj["fingerprint"] != fingerprint:
        raise HawqError(f"{where} was made for another model (fingerprint {obj['fingerprint']}, this model "
                        f"{fingerprint}); fine-tune this model")
    return QuantizedCheckpoint(obj["model"], obj["fingerprint"], state, plan)
