"""The micro-batches of a JSON job ({ids, labels}: per example its token ids and the token predicted
at each position, -1 = no loss) as PyTorch training code pads them: on the right, to the longest
example. Shared by bench/torch_train_step.py (and torch_mm_train_step.py) and
bench/torch_plain_adapter.py (and torch_peft_step.py)."""
import torch


def padded(batch, device="cpu"):
    """{ids, labels} lists per example -> ids, labels (B, longest) long (labels -1 = no loss),
    valid (B, longest) bool, on `device`; the real tokens and the padded ones (B x longest)."""
    B = len(batch["ids"])
    T = max(len(x) for x in batch["ids"])
    ids = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -1, dtype=torch.long)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for b, (x, y) in enumerate(zip(batch["ids"], batch["labels"])):
        ids[b, : len(x)] = torch.tensor(x)
        labels[b, : len(y)] = torch.tensor(y)
        valid[b, : len(x)] = True
    return ids.to(device), labels.to(device), valid.to(device), sum(len(x) for x in batch["ids"]), B * T
