"""Small models of every kind the subspace conversion must handle (CPU, seconds)."""
import torch
import torch.nn as nn


class BNCNN(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class MHAText(nn.Module):
    """Embedding → TransformerEncoderLayer (nn.MultiheadAttention inside) → LayerNorm → Linear."""

    def __init__(self, vocab=20, dim=16, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(self.norm(self.layer(self.embed(tokens)).mean(1)))


class MHAOnly(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def tiny_vit():
    from tractable.models import create_model

    return create_model("vit_cifar", num_classes=4, in_channels=3, image_size=8, patch_size=4, hidden=16,
                        mlp_hidden=32, heads=2, depth=1)
