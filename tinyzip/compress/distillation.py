"""Knowledge distillation: Hinton et al.'s soft targets, TinyBERT's layer losses and layer mapping.

Papers
------
* Geoffrey Hinton, Oriol Vinyals, Jeff Dean (2015). "Distilling the Knowledge in a Neural
  Network". arXiv:1503.02531. The student matches the teacher's output distribution softened by a
  temperature T; the soft term is scaled by T^2 so its gradients keep their size as T changes.
* Xiaoqi Jiao, Yichun Yin, Lifeng Shang, Xin Jiang, Xiao Chen, Linlin Li, Fang Wang, Qun Liu
  (2020). "TinyBERT: Distilling BERT for Natural Language Understanding". Findings of EMNLP 2020,
  arXiv:1909.10351. Mean squared errors between the student's and the teacher's hidden states and
  attention scores (before the softmax), layer by layer; a shallower student's layer m against
  the teacher's layer g(m) (its uniform, top or bottom mapping).
* Victor Sanh, Lysandre Debut, Julien Chaumond, Thomas Wolf (2019). "DistilBERT, a distilled
  version of BERT". EMC^2 workshop at NeurIPS 2019, arXiv:1910.01108. A student of half the layers,
  initialized with one teacher layer out of two, trained on L = a_ce L_soft + a_mlm L_hard +
  a_cos L_cos at T = 2, with L_cos the cosine distance between the last hidden states (weights
  5 : 2 : 1 in huggingface's README example).
* Wei Zhang et al. (2020). "TernaryBERT". arXiv:2009.12812. Trains its quantized student (initialized
  from the teacher, same shape) with L = L_pred + L_trm: soft cross-entropy at T = 1 on the outputs
  plus TinyBERT's layer losses over every hidden state (the embedding output included) and every
  attention score matrix, with equal weights.

Notation map (paper -> code)
----------------------------
z, v (student, teacher logits), T (temperature)   -> ``z``, ``v`` (B, T, V), ``temperature``
q, p (their softened distributions)                -> ``q``, ``p``
H^l, A^l (hidden state after layer l, l = 0 the embedding output; attention scores)
    -> the model's states "enc.hidden", "dec.hidden" (layers + 1 each, (B, S|T, D)) and
       "enc.scores", "dec.self_scores", "dec.cross_scores" (one per layer, (B, heads, T, S))

Equations (labelled (K1)-(K5) here; Hinton et al. do not number them)
---------------------------------------------------------------------
(K1) q = softmax(z / T),  p = softmax(v / T)                       (per target token, over V)
(K2) L_soft = T^2 (1/N) sum_tokens sum_k p_k (log p_k - log q_k)   (KL(p || q), averaged over the N
     non-PAD target tokens, summed over classes: PyTorch's "batchmean", not "mean")
(K3) dL_soft / dz = T (q - p) / N                                  (the T^2 scaling's reason: the
     gradient of KL at temperature T is (q - p) / T)
(K4) L = alpha L_soft + (1 - alpha) L_hard,  L_hard = the model's label-smoothed cross-entropy at T = 1
(K5) L_trm = sum_l mean_valid (H_S^l - H_T^l)^2 + sum_l mean_allowed (A_S^l - A_T^l)^2
     "valid": the positions of real tokens; "allowed": the (query, key) pairs the attention mask
     keeps (real query, real key, and key <= query in the decoder's self-attention)
     Total: L + beta L_trm.  TernaryBERT: alpha = 1, T = 1, beta = 1.
(K6) L_cos = mean_valid (1 - h_S . h_T / (||h_S|| ||h_T||)) over the last decoder layer's output
     (DistilBERT's term on its last hidden states), in [0, 2]
     Total: L + beta L_trm + gamma L_cos.  DistilBERT's 5 : 2 : 1 is alpha = 5/7, gamma = 1/7, T = 2.
(K7) TinyBERT's layer mapping for a student of M layers and a teacher of N (per stack): student
     hidden state m (m = 0 the embedding output) is compared with teacher state g(m), g(0) = 0, and
     student layer m's scores with teacher layer g(m)'s (m = 1 .. M):
     "uniform" g(m) = m N / M (N divisible by M), "top" g(m) = m + N - M, "bottom" g(m) = m.
     (huawei-noah's ``task_distill.py``: attention index i k + k - 1, hidden index j k, k = N / M.)

Choices
-------
* The soft term is the KL, not TernaryBERT's soft cross-entropy: they differ by the teacher's
  entropy H(p), a constant, so the gradients are the same and the loss is 0 when q = p.
* The means of (K5) run over real positions only. TernaryBERT's code (``quant_task_glue.py``) takes
  the mean over every entry: masked attention scores set to zero in both models first, padded
  positions' hidden states as they are. Those entries are not the model's outputs here.
* The teacher runs without dropout or activation quantizers and gets no gradient. It may be a
  different model (``teacher_model``, e.g. the full-depth model of a half-depth student): (K1)-(K4)
  and (K6) need only equal logits' and hidden states' widths; (K5) needs equal depths, or a (K7)
  mapping. Equal widths too: TinyBERT's learnable projection of a narrower student's states
  (``fit_dense``) is not here, as our students keep the teacher's width.
* (K6)'s norms get a 1e-12 floor, so a zero hidden state gives cosine 0, not NaN.
"""
from dataclasses import dataclass

import numpy as np

from tinyzip.nn.layers import log_softmax_forward
from tinyzip.nn.losses import PAD, cross_entropy_backward, cross_entropy_forward

HIDDEN_KEYS = ("enc.hidden", "dec.hidden")
SCORE_KEYS = ("enc.scores", "dec.self_scores", "dec.cross_scores")


def _check_pair(name, student, teacher):
    for who, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{who} {name} must be a float ndarray, got {getattr(x, 'dtype', type(x).__name__)}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{who} {name} has NaN or inf entries")
    if student.shape != teacher.shape:
        raise ValueError(f"student {name} {student.shape} and teacher {name} {teacher.shape} differ in shape")


def soft_target_loss(z, v, valid, temperature: float = 1.0) -> tuple[float, np.ndarray]:
    """(K1)-(K3): (L_soft, dL_soft/dz) for student logits z and teacher logits v (..., V), over the
    positions where ``valid`` (z.shape[:-1], bool) is True."""
    _check_pair("logits", z, v)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != z.shape[:-1] or not valid.any():
        raise ValueError(f"valid must be a boolean {z.shape[:-1]} array with a True entry, got {valid.shape}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    n = int(valid.sum())
    # Eq. (K1)
    log_q, _ = log_softmax_forward(z / temperature)
    log_p, _ = log_softmax_forward(v / temperature)
    p = np.exp(log_p)
    # Eq. (K2)
    kl = np.sum(p * (log_p - log_q), axis=-1)
    loss = temperature ** 2 * float(np.sum(kl[valid], dtype=np.float64)) / n
    # Eq. (K3)
    dz = (temperature / n) * (np.exp(log_q) - p) * valid[..., None]
    return loss, dz.astype(z.dtype)


def state_mse(student, teacher, keep) -> tuple[float, np.ndarray]:
    """One term of (K5): (mean over the entries ``keep`` marks of (student - teacher)^2, its gradient
    w.r.t. student). ``keep`` is a boolean array that broadcasts to the states' shape."""
    _check_pair("state", student, teacher)
    keep = np.broadcast_to(np.asarray(keep, dtype=bool), student.shape)
    count = int(keep.sum())
    if count == 0:
        raise ValueError("state_mse: no entry to compare (keep is all False)")
    diff = np.where(keep, student - teacher, 0)
    return float(np.sum(diff * diff, dtype=np.float64)) / count, (2.0 / count) * diff


def state_masks(src, tgt_in) -> dict:
    """For each state key, the boolean array of the entries (K5) compares: real source / target
    positions for hidden states (B, S | T, 1); real (query, key) pairs the attention keeps for scores
    (B, 1, T, S), causal in the decoder's self-attention."""
    src_ok, tgt_ok = np.asarray(src) != PAD, np.asarray(tgt_in) != PAD          # (B, S), (B, T)
    T = tgt_ok.shape[1]
    causal = np.tril(np.ones((T, T), dtype=bool))                               # key <= query
    return {"enc.hidden": src_ok[:, :, None], "dec.hidden": tgt_ok[:, :, None],
            "enc.scores": src_ok[:, None, :, None] & src_ok[:, None, None, :],
            "dec.self_scores": tgt_ok[:, None, :, None] & tgt_ok[:, None, None, :] & causal,
            "dec.cross_scores": tgt_ok[:, None, :, None] & src_ok[:, None, None, :]}


LAYER_MAPS = ("uniform", "top", "bottom")


def layer_map(n_student: int, n_teacher: int, strategy: str = "uniform") -> list:
    """(K7): [g(0), g(1), ..., g(M)], the teacher state each student state is compared with."""
    if strategy not in LAYER_MAPS:
        raise ValueError(f"layer map must be one of {LAYER_MAPS}, got {strategy!r}")
    if not 1 <= n_student <= n_teacher:
        raise ValueError(f"need 1 <= student layers <= teacher layers, got {n_student} and {n_teacher}")
    if strategy == "uniform" and n_teacher % n_student:
        raise ValueError(f"the uniform map needs teacher layers ({n_teacher}) divisible by student layers "
                         f"({n_student})")
    # Eq. (K7)
    g = {"uniform": lambda m: m * n_teacher // n_student, "top": lambda m: m + n_teacher - n_student,
         "bottom": lambda m: m}[strategy]
    return [0] + [g(m) for m in range(1, n_student + 1)]


def layer_loss(student_states: dict, teacher_states: dict, masks: dict, mapping: str | None = None
               ) -> tuple[float, dict]:
    """(K5): (L_trm, dstates) summed over every hidden state and score matrix of both stacks;
    ``dstates`` has the model backward's ``dstates`` form ({key: [array per layer]}). With
    ``mapping`` (K7) a shallower student's states meet the teacher states it names."""
    total, dstates = 0.0, {}
    for key in HIDDEN_KEYS + SCORE_KEYS:
        s_list, t_list = student_states.get(key, []), teacher_states.get(key, [])
        if mapping is not None and s_list:
            hidden = key in HIDDEN_KEYS                      # M + 1 states, else M score matrices
            g = layer_map(len(s_list) - hidden, len(t_list) - hidden, mapping)
            t_list = [t_list[i] for i in g] if hidden else [t_list[i - 1] for i in g[1:]]
        if len(s_list) != len(t_list):
            raise ValueError(f"{key}: the student has {len(s_list)} layers' states, the teacher {len(t_list)}")
        dstates[key] = []
        for s, t in zip(s_list, t_list):
            loss, ds = state_mse(s, t, masks[key])
            total += loss
            dstates[key].append(ds)
    return total, dstates


def cosine_loss(student, teacher, valid) -> tuple[float, np.ndarray]:
    """(K6): (mean over ``valid`` positions of 1 - cos(h_S, h_T), its gradient w.r.t. h_S) for
    hidden states (..., D); ``valid`` has the states' leading shape."""
    _check_pair("hidden state", student, teacher)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != student.shape[:-1] or not valid.any():
        raise ValueError(f"valid must be a boolean {student.shape[:-1]} array with a True entry, got {valid.shape}")
    n = int(valid.sum())
    s_norm = np.maximum(np.linalg.norm(student, axis=-1, keepdims=True), 1e-12)
    t_norm = np.maximum(np.linalg.norm(teacher, axis=-1, keepdims=True), 1e-12)
    # Eq. (K6)
    cos = np.sum(student * teacher, axis=-1, keepdims=True) / (s_norm * t_norm)
    loss = float(np.sum((1.0 - cos[..., 0])[valid], dtype=np.float64)) / n
    # d(1 - cos)/dh_S = -(h_T / (|h_S| |h_T|) - cos h_S / |h_S|^2)
    grad = -(teacher / (s_norm * t_norm) - cos * student / (s_norm * s_norm)) * valid[..., None] / n
    return loss, grad.astype(student.dtype)


@dataclass
class Distiller:
    """Training with (K4) + beta (K5) + gamma (K6) against a fixed teacher: a drop-in for the model
    in ``train.train`` (it has ``loss_and_grads``).

    ``model`` runs the student (the params being trained, with dropout and the method's activation
    hooks); ``teacher_model`` (default: ``model``, TernaryBERT's same-shape setting) runs the
    teacher (``teacher_params``, no dropout, no hooks, no gradient)."""

    model: object
    teacher_params: dict
    alpha: float = 1.0
    temperature: float = 1.0
    beta: float = 1.0
    gamma: float = 0.0
    teacher_model: object = None
    layer_map: str | None = None       # (K7) for (K5) between a shallower student and its teacher

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not (np.isfinite(self.temperature) and self.temperature > 0) or not (self.beta >= 0 and self.gamma >= 0):
            raise ValueError(f"temperature must be > 0 and beta, gamma >= 0, got {self.temperature}, "
                             f"{self.beta}, {self.gamma}")

    def loss_and_grads(self, params, src, tgt_in, tgt_out, *, rng=None, act_hooks=None, head_mask=None):
        layers, states = self.beta > 0, self.beta > 0 or self.gamma > 0
        teacher = self.teacher_model or self.model
        v, t_cache = teacher.forward(self.teacher_params, src, tgt_in, return_states=states)
        z, cache = self.model.forward(params, src, tgt_in, rng=rng, act_hooks=act_hooks, head_mask=head_mask,
                                      return_states=states)
        hard, h_cache = cross_entropy_forward(z, tgt_out, self.model.config.label_smoothing, PAD)
        soft, dz_soft = soft_target_loss(z, v, np.asarray(tgt_out) != PAD, self.temperature)
        # Eq. (K4)
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        dz = self.alpha * dz_soft + (1.0 - self.alpha) * cross_entropy_backward(1.0, h_cache)
        trm, cos, dstates = 0.0, 0.0, None
        if layers:
            trm, dstates = layer_loss(cache.states, t_cache.states, state_masks(src, tgt_in), self.layer_map)
            dstates = {k: [self.beta * d.astype(z.dtype) for d in ds] for k, ds in dstates.items()}
        if self.gamma > 0:
            cos, dh = cosine_loss(cache.states["dec.hidden"][-1], t_cache.states["dec.hidden"][-1],
                                  np.asarray(tgt_in) != PAD)
            dstates = dstates or {"dec.hidden": [None] * len(cache.states["dec.hidden"])}
            last = dstates["dec.hidden"][-1]
            dstates["dec.hidden"][-1] = self.gamma * dh if last is None else last + self.gamma * dh
        grads = self.model.backward(dz.astype(z.dtype), cache, dstates)
        return loss + self.beta * trm + self.gamma * cos, grads, {"tokens": h_cache.tokens, "nll": h_cache.nll,
                                                                  "soft": soft, "layers": trm, "cosine": cos}
