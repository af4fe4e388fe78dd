"""Recognition quality: text normalisation and WER (``text``), speech sets (``corpus``), ``streamproxy eval``."""
