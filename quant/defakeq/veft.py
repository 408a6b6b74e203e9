"""VEFT: vertical efficient feature fine-tuning, DeFakeQ's across-depth half.

Block by block from shallow to deep, only quantization parameters are learned (weights stay
frozen): the soft rounding of every weight (AdaRound's rectified sigmoid), a per-channel
weight step (s = s0 * exp(g)) and the activation steps (LSQ). Unit k minimises

    L_k = || f_k^q(x^q) - f_k(x) ||^2 + lambda * R_beta(V)
          + gamma_k * E_k * [ L_inst(z^q, z) + mu * L_sup(z^q, y) ]

with z = normalize(GAP(block output)) the pooled block feature of the full-precision model,
z^q the quantized one, E_k = E[sum_c f_k(x)^2] (so that gamma is relative to the block's output
energy, like the relative reconstruction error), gamma_k = gamma * ((k+1)/K)^p growing with
depth, and

    L_inst = -1/B sum_i log( exp(z^q_i . z_i / tau) / sum_j exp(z^q_i . z_j / tau) )   (InfoNCE:
             each image's quantized feature close to its own float feature, away from others')
    L_sup  = -1/B sum_i 1/|P(i)| sum_{p in P(i)} log( exp(z^q_i . z_p / tau)
             / sum_j exp(z^q_i . z_j / tau) )                                   (supervised
             contrastive across views: P(i) = the frames with i's label; quantized features
             pulled to the float features of their class, away from the other class's)

Blocks whose pooled output has fewer than 8 channels (the classifier's logits) get no
contrastive term.

Final codes are the hard rounding floor(w/s0) + 1[V >= 0]; scales s are learned values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pooled(feat: torch.Tensor) -> torch.Tensor:
    """Global average over every dimension after the channel one; [B, C]."""
    return feat.reshape(feat.shape[0], feat.shape[1], -1).mean(dim=2) if feat.ndim > 2 else feat


def info_nce(z_q: torch.Tensor, z_fp: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE with the float features as keys: row i's positive is column i."""
    logits = z_q @ z_fp.T / tau
    return F.cross_entropy(logits, torch.arange(len(z_q), device=z_q.device))


def sup_con(z_q: torch.Tensor, z_fp: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) across views: anchors are the
    quantized features, keys the float ones; the positives of anchor i are the keys with i's
    label (its own included), the rest are negatives. Pulling towards the float features of
    the same class, rather than towards other quantized features, keeps the class structure the
    float model already has instead of inventing a new geometry the next layers do not expect."""
    log_prob = F.log_softmax(z_q @ z_fp.T / tau, dim=1)
    pos = (labels[:, None] == labels[None, :]).to(log_prob.dtype)
    return -((log_prob * pos).sum(dim=1) / pos.sum(dim=1)).mean()


@dataclass
class ProgressiveContrast:
    """The contrastive term as an `extra` loss of the reconstruction engine."""

    gamma: float = 0.05
    tau: float = 0.1
    mu: float = 1.0  # weight of the supervised term relative to the instance term
    power: float = 1.0  # gamma_k = gamma * ((k + 1) / K) ** power
    min_dim: int = 8  # blocks with fewer pooled channels (the logits) get no contrastive term

    def weight(self, k: int, n_units: int) -> float:
        return self.gamma * ((k + 1) / n_units) ** self.power

    def __call__(self, k: int, n_units: int, out_q: torch.Tensor, out_fp: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor | None:
        w = self.weight(k, n_units)
        if w <= 0:
            return None
        energy = out_fp.detach().pow(2).sum(dim=1).mean() if out_fp.ndim > 1 else out_fp.detach().pow(2).mean()
        z_q = pooled(out_q)
        if z_q.shape[1] < self.min_dim:  # a classifier's logits are not a feature space
            return None
        z_q = F.normalize(z_q, dim=1)
        z_fp = F.normalize(pooled(out_fp.detach()), dim=1)
        loss = info_nce(z_q, z_fp, self.tau)
        if self.mu:
            loss = loss + self.mu * sup_con(z_q, z_fp, labels, self.tau)
        return w * energy * loss
