"""Tiny encoders for tests of users' own models: seeded convolutions, feature maps out."""

from __future__ import annotations


def build():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(5, 12, kernel_size=1), torch.nn.ReLU())


def build_context():
    """A feature map of the input's size whose pixels see their 3 x 3 neighbourhood (zero padding)."""
    import torch

    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(5, 6, kernel_size=3, padding=1), torch.nn.Tanh())
