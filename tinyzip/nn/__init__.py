"""The Transformer by hand: pure ``*_forward -> (out, cache)`` / ``*_backward(dout, cache)`` pairs.

Notation (one table for the whole package):

    B  batch            S  source length     T  target length     D  model width
    H  heads            Dh = D / H           F  FFN width         V  vocabulary
    N  rows of a plain (N, D) matrix

Weights are ``W: (D_in, D_out)`` and every layer computes ``y = x @ W + b``. ``dX`` is dL/dX, with
the shape and dtype of ``X``. Special tokens in every vocabulary: PAD=0, BOS=1, EOS=2, UNK=3.

Modules: ``layers`` (linear, embedding, layer norm, ReLU, GELU, softmax, log-softmax, dropout),
``losses`` (label-smoothed cross-entropy), ``attention`` (multi-head attention), ``blocks`` (the
sub-layers and encoder stack both models share), ``transformer`` (``Seq2Seq``), ``classifier``
(``EncoderClassifier``), ``optim``, ``gradcheck``.
"""
from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig

__all__ = ["ClassifierConfig", "EncoderClassifier", "Seq2Seq", "Seq2SeqConfig"]
