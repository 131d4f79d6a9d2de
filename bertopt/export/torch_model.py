"""The PyTorch side of export, which qat, compress and bench also use: the Hugging Face model loaded
for export (eager attention) and the wrapper whose outputs become the ONNX graph's."""

from __future__ import annotations

from pathlib import Path

from bertopt.errors import BertoptError


def load_torch_model(model_dir: Path, task: str):
    """The HF model in eval mode with eager attention (transformers 4.x and 5.x)."""
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    cfg = AutoConfig.from_pretrained(str(model_dir), attn_implementation="eager", trust_remote_code=False)
    cls = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModel
    weights = weights_file(Path(model_dir))
    try:
        # never trust_remote_code; transformers reads .bin pickles with torch.load(weights_only=True)
        model = cls.from_pretrained(str(model_dir), config=cfg, attn_implementation="eager", trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - config.json was read: what fails here is the weights file
        raise _weights_error(weights, e) from None
    return model.eval()


def weights_file(model_dir: Path) -> Path:
    """The weights file transformers will read (safetensors first, as it does)."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (model_dir / name).is_file():
            return model_dir / name
    return model_dir


def _weights_error(weights: Path, e: BaseException) -> BertoptError:
    msg = " ".join(str(e).split())
    if "Weights only load failed" in msg:  # torch advises retrying with an unsafe load: not ours to give
        msg = "torch.load(weights_only=True) refused it" + (": " + msg.split("WeightsUnpickler error:")[1].split(".")[0].strip()
                                                            if "WeightsUnpickler error:" in msg else "")
    pickled = weights.suffix == ".bin" or weights.name.startswith("pytorch_model")
    hint = ("the file is a pickle that PyTorch's safe loader (weights_only) refuses, and bertopt never unpickles "
            "arbitrary objects: re-save the model as safetensors (`model.save_pretrained(DIR)`) from a source you trust"
            if pickled else
            "the file is truncated or corrupt: re-download the model, or re-save it with `model.save_pretrained(DIR)`")
    return BertoptError(f"{weights}: cannot load the weights ({type(e).__name__}: {msg[:240]})", hint=hint)


def make_wrapper(model, task: str, input_names: tuple[str, ...], pooling: str, normalize: bool):
    """A module with positional int64 inputs in ``input_names`` order and named outputs."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            kwargs = dict(zip(input_names, args))
            out = self.model(**kwargs)
            if task == "sequence-classification":
                return (out.logits,)
            hidden = out.last_hidden_state
            if pooling == "none":
                return (hidden,)
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return hidden, pooled

    # The legacy exporter restores the wrapper's training flag on everything inside it: eval() both.
    return Wrapper().eval()
