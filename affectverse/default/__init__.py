"""The embedded default: the tiny random preset and the generated clips that ``python train.py`` trains on."""
