"""Distillation from a frozen teacher, shared by ``qat`` (its fake-quantized copy) and ``compress`` (a smaller student).

- ``options``: ``TrainingOptions``, the training run's options both stages inherit;
- ``batches``: tokenized texts, length-bucketed batches, the per-step schedule (resumable, sharded);
- ``losses``:  distillation (logits with temperature, embeddings, hidden states, attention) + task loss;
- ``dist``:    torch.distributed (torchrun) detection and helpers;
- ``train``:   the training loop: progress bar, held-out evaluation, early stopping, checkpoints.
- ``checkpoint``: the run's resumable checkpoint (atomic, fingerprinted, removes only its own files).
"""
