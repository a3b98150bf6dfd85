"""
sealab train.py: the one file the research agent edits.

A small byte-level GPT trained from scratch within a fixed time budget. The harness (prepare.py,
read-only) owns the data, the clock and the evaluation: it calls train(h) and measures val_bpb
(bits per byte on held-out text, lower is better) on the model that train(h) returns.

Harness API: h.device, h.vocab_size (256), h.eval_seq_len (256), h.autocast(),
h.get_batch(batch_size, seq_len) -> (x, y), h.time_left(), h.progress() in [0, 1],
h.step(tokens, loss) once per optimizer step. Report nothing yourself: no prints, no files.
Run directly with `python3 train.py` (it hands over to prepare.main()).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

# Model
DEPTH = 3                   # number of transformer blocks
N_EMBD = 128                # model width (residual stream dimension)
N_HEAD = 4                  # attention heads; head dim = N_EMBD // N_HEAD
MLP_RATIO = 4               # MLP hidden width = MLP_RATIO * N_EMBD
ROPE_BASE = 10000.0         # rotary position embedding base
LOGIT_SOFTCAP = 15.0        # logits are squashed to (-cap, cap) with tanh

# Batch
SEQ_LEN = 256               # training context length in bytes
BATCH_SIZE = 8              # sequences per optimizer step

# Optimization (AdamW, one param group per kind of parameter)
EMBEDDING_LR = 0.03         # LR of the token embedding
UNEMBEDDING_LR = 0.01       # LR of the output head
MATRIX_LR = 0.01            # LR of the weight matrices inside the blocks
SCALAR_LR = 0.5             # LR of learnable per-layer scalars (x0 mixing lambdas; residual lambdas get 1% of it)
WEIGHT_DECAY = 0.0          # AdamW weight decay, matrices only
ADAM_BETAS = (0.9, 0.95)    # AdamW betas
GRAD_CLIP = 1.0             # max global grad norm (0 disables)

# Schedule (fractions of the time budget)
WARMUP_RATIO = 0.02         # linear LR warmup
WARMDOWN_RATIO = 0.4        # linear LR decay to FINAL_LR_FRAC at the end
FINAL_LR_FRAC = 0.0         # LR multiplier reached at the end of the budget

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary(seq_len, head_dim, device):
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # [1, T, 1, hd/2]


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, N_HEAD, C // N_HEAD).unbind(2)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_EMBD, MLP_RATIO * N_EMBD, bias=False)
        self.proj = nn.Linear(MLP_RATIO * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.mlp = MLP()

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, max_seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(DEPTH))  # scales the residual stream before each block
        self.x0_lambdas = nn.Parameter(torch.zeros(DEPTH))  # mixes the input embedding back in before each block
        cos, sin = rotary(max_seq_len, N_EMBD // N_HEAD, self.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.qkv, block.mlp.fc):
                nn.init.uniform_(lin.weight, -(3 ** 0.5) * N_EMBD ** -0.5, (3 ** 0.5) * N_EMBD ** -0.5)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin)
        logits = self.lm_head(norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------


def make_optimizer(model):
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    groups = [
        dict(params=[model.wte.weight], lr=EMBEDDING_LR, weight_decay=0.0),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR, weight_decay=0.0),
        dict(params=matrices, lr=MATRIX_LR, weight_decay=WEIGHT_DECAY),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01, weight_decay=0.0),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR, weight_decay=0.0),
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, betas=ADAM_BETAS, eps=1e-10)


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------
# Training loop: runs until the harness's time budget is spent
# ---------------------------------------------------------------------------


def train(h):
    model = GPT(h.vocab_size, max(SEQ_LEN, h.eval_seq_len)).to(h.device)
    optimizer = make_optimizer(model)
    model.train()
    while h.time_left() > 0:
        x, y = h.get_batch(BATCH_SIZE, SEQ_LEN)
        with h.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        lrm = lr_multiplier(h.progress())
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lrm
        optimizer.step()
        model.zero_grad(set_to_none=True)
        h.step(BATCH_SIZE * SEQ_LEN, loss.detach())
    return model


if __name__ == "__main__":
    import prepare

    prepare.main()
