"""An independent float64 TrAct reference: pad and unfold by explicit index arithmetic, solve with linalg.solve.

Nothing here calls F.pad, F.unfold, Tensor.unfold or the code under test.
"""
import itertools

import torch
import torch.nn as nn


def _src_index(p, size, mode):
    """Source index for padded coordinate p (may be out of range), or -1 for a zero pad."""
    if 0 <= p < size:
        return p
    if mode == "zeros":
        return -1
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    if mode == "reflect":
        period = 2 * (size - 1)
        q = p % period
        return q if q < size else period - q
    raise ValueError(mode)


def conv_padding(conv):
    """Per-dimension (left, right) padding as PyTorch documents it (independent of its private fields)."""
    d = len(conv.kernel_size)
    if conv.padding == "valid":
        return [(0, 0)] * d
    if conv.padding == "same":
        out = []
        for k, dil in zip(conv.kernel_size, conv.dilation):
            total = dil * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in conv.padding]


def conv_rows(conv, x):
    """X (B*prod(out), C*prod(k)) in weight order and the output spatial shape, float64."""
    x = x.double()
    if x.dim() == len(conv.kernel_size) + 1:
        x = x.unsqueeze(0)
    B, C = x.shape[:2]
    S = x.shape[2:]
    d = len(S)
    pads = conv_padding(conv)
    k, s, dil = conv.kernel_size, conv.stride, conv.dilation
    out = [(S[i] + pads[i][0] + pads[i][1] - dil[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(d)]
    rows = []
    for o in itertools.product(*[range(n) for n in out]):
        cols = []
        for c in range(C):
            for kk in itertools.product(*[range(n) for n in k]):
                idx = []
                zero = False
                for i in range(d):
                    p = o[i] * s[i] + kk[i] * dil[i] - pads[i][0]
                    j = _src_index(p, S[i], conv.padding_mode)
                    if j < 0:
                        zero = True
                    idx.append(j)
                cols.append(None if zero else (c, *idx))
        rows.append(cols)
    L = len(rows)
    n = C * len(list(itertools.product(*[range(n) for n in k])))
    X = torch.zeros(B, L, n, dtype=torch.float64)
    for li, cols in enumerate(rows):
        for ci, ix in enumerate(cols):
            if ix is not None:
                X[:, li, ci] = x[(slice(None),) + ix]
    return X.reshape(B * L, n), out


def reference(layer, x, R, lam):
    """(output, plain weight grad, TrAct weight grad) for loss = sum(output * R), all float64."""
    W = layer.weight.detach().double()
    bias = None if layer.bias is None else layer.bias.detach().double()
    if isinstance(layer, nn.Linear):
        n = W.shape[1]
        X = x.detach().double().reshape(-1, n)
        Z = X @ W.T + (0 if bias is None else bias)
        out = Z.reshape(*x.shape[:-1], W.shape[0])
        Gm = R.double().reshape(-1, W.shape[0])
        groups = 1
    else:
        X, out_shape = conv_rows(layer, x.detach())
        groups = layer.groups
        m = W.shape[0]
        Wf = W.reshape(m, -1)
        unbatched = x.dim() == len(layer.kernel_size) + 1
        B = 1 if unbatched else x.shape[0]
        C_g = W.shape[1]
        kk = Wf.shape[1] // C_g
        Zs = []
        for g in range(groups):
            Xg = X[:, g * C_g * kk:(g + 1) * C_g * kk]
            Zs.append(Xg @ Wf[g * (m // groups):(g + 1) * (m // groups)].T)
        Z = torch.cat(Zs, 1) + (0 if bias is None else bias)
        out = Z.reshape(B, *out_shape, m).movedim(-1, 1)
        if unbatched:
            out = out[0]
        Rb = R.double() if not unbatched else R.double().unsqueeze(0)
        Gm = Rb.movedim(1, -1).reshape(-1, m)
    b = X.shape[0]
    m = W.shape[0]
    plain = torch.zeros(m, X.shape[1] // groups, dtype=torch.float64)
    tract = torch.zeros_like(plain)
    ng = X.shape[1] // groups
    mg = m // groups
    for g in range(groups):
        Xg = X[:, g * ng:(g + 1) * ng]
        Gg = Gm[:, g * mg:(g + 1) * mg]
        M = Gg.T @ Xg
        K = Xg.T @ Xg / b + lam * torch.eye(ng, dtype=torch.float64)
        plain[g * mg:(g + 1) * mg] = M
        tract[g * mg:(g + 1) * mg] = torch.linalg.solve(K, M.T).T
    return out, plain.reshape(W.shape), tract.reshape(W.shape)
