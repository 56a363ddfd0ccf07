"""Figures and small analyses for the teaching notebooks: one colour per setting, readable log axes, attention masks,
Algorithm 1 as token strips (Fig. 2), reachability through layers, and an interactive mask explorer.

Everything here draws what the package computes: masks come from `reference.attention_mask`, the roll of Algorithm 1
from `attention._shift`, so a figure cannot disagree with the code it explains. `tests/test_plotting.py` checks the
analyses against hand-computed cases and the figures' structure (axes, patches, legends, tick labels).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm, PowerNorm
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from .attention import S2_VARIANTS, _shift, group
from .patterns import PATTERNS, head_chunks
from .reference import attention_mask

# one colour per setting, in every notebook and panel; unique within each block below
SETTING_COLORS = {
    # attention while training (Tables 1, 6, 7)
    "full": "black", "short": "tab:orange", "s2": "tab:blue", "shift_all": "teal", "s2_layers": "tab:purple",
    "dilated": "tab:olive", "block_sparse": "tab:brown", "stride_sparse": "tab:pink", "local": "tab:gray",
    "short_sink": "#ffbb78", "s2_sink": "#aec7e8",  # issue 16: short / S2-Attn plus the first n_sink tokens (lighter)
    "s2_full_steps": "navy", "s2_grow": "tab:cyan", "base+PI": "silver",  # issue 16: the remedies; the starting point
    # the shifted half's variants (Table 8); "split" is S2-Attn's default, so it keeps s2's colour
    "split": "tab:blue", "roll": "tab:red", "roll_up": "#f4a582", "swap": "tab:green",
    # what trains (Table 2, notebook 04)
    "full_ft": "black", "lora": "tab:gray", "lora_plus": "tab:green",
    "lora_plus_norm": "tab:olive", "lora_plus_embed": "tab:cyan",  # Table 2: LoRA + norm only, + embedding only
    "lora_plus_lr10": "darkgreen",  # Figure 5's diagnostic: LoRA+ at ten times the regime's learning rate
    "lora_plus_lr10_full_attn": "limegreen",  # … and at that rate trained with full attention
    # the FLOPs of Table 11, by kind
    "attn": "tab:red", "proj": "#6baed6", "ffn": "#74c476", "others": "#bdbdbd",
    # models and sources of numbers
    "tiny": "tab:orange", "small": "tab:green", "llama2-7b": "tab:purple", "hf": "tab:gray",
    "paper": "tab:purple", "predicted": "tab:red",
}
READ, FUTURE, ADDED, MASKED = (0.23, 0.42, 0.70), (0.85, 0.10, 0.10), (0.95, 0.55, 0.10), (1.0, 1.0, 1.0)
CHUNK_NAMES = {"s2": ("pattern 1", "pattern 2"), "short": ("pattern 1",), "shift_all": ("pattern 2",),
               "s2_layers": ("pattern 1 or 2 by layer",), "dilated": ("rate 1", "rate 2"),
               "block_sparse": ("own block", "1 block back", "2 blocks back", "3 blocks back"),
               "stride_sparse": ("local", "strided"), "local": ("window",), "full": ("causal",),
               "short_sink": ("pattern 1 + sinks",), "s2_sink": ("pattern 1 + sinks", "pattern 2 + sinks")}
SHIFTED_CHUNKS = {"s2": (1,), "shift_all": (0,), "s2_sink": (1,)}  # the chunks whose group borders sit at G/2 + kG


def color(setting: str) -> str:
    """The colour of `setting` (SETTING_COLORS), the same in every figure."""
    if setting not in SETTING_COLORS:
        raise KeyError(f"no colour for {setting!r}; add it to plotting.SETTING_COLORS")
    return SETTING_COLORS[setting]


def use_style() -> None:
    """The notebooks' matplotlib settings: small figures, titles larger than axis labels."""
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "font.size": 9, "axes.labelsize": 9,
                         "axes.titlesize": 10, "figure.titlesize": 11, "legend.fontsize": 8})


def plain_number(v: float) -> str:
    """A tick label without powers: 0.001, 0.5, 20, 1,000, 2k (powers of two from 1024 up as k), 10 M, 1 B."""
    if v >= 1024 and v % 1024 == 0 and (int(v) & (int(v) - 1)) == 0:
        return f"{int(v) // 1024}k"
    if v >= 1e6:
        return f"{v / 1e9:g} B" if v >= 1e9 else f"{v / 1e6:g} M"
    if v >= 1 and v == int(v):
        return f"{v:,.0f}"
    return np.format_float_positional(float(f"{v:.3g}"), trim="-")  # 0.00001, never 1e-05


def log_axis(ax, axis: str = "y", ticks=None, base: float = 10) -> None:
    """A log axis with plain-number labels: at `ticks` if given, else at 1, 2, 5 × each power of ten (powers of ten
    only when the axis, as drawn so far, spans more than three decades). Call it after setting the limits."""
    getattr(ax, f"set_{axis}scale")("log", base=base)
    target = ax.xaxis if axis == "x" else ax.yaxis
    if ticks is not None:
        getattr(ax, f"set_{axis}ticks")(list(ticks), [plain_number(t) for t in ticks])
        target.set_minor_locator(NullLocator())
    else:
        lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
        target.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
        target.set_minor_formatter(NullFormatter())


# masks ------------------------------------------------------------------------------------------------------------
def _borders(ax, n: int, G: int, shifted: bool, color_: str = "black") -> None:
    for b in range(G // 2 if shifted else G, n, G):
        for line in (ax.axhline, ax.axvline):
            line(b - 0.5, color=color_, lw=0.9, ls="--" if shifted else "-")


def draw_mask(ax, mask: torch.Tensor, G: int | None = None, shifted: bool = False, title: str = "") -> None:
    """One (n, n) bool mask: blue = query i (row) reads key j (column), red = reads the future (j > i), white =
    masked; lines at pattern 1's group borders (solid) or pattern 2's (dashed, `shifted`)."""
    n = mask.shape[-1]
    i, j = np.indices((n, n))
    m = mask.numpy().astype(bool)
    img = np.ones((n, n, 3))
    img[m] = READ
    img[m & (j > i)] = FUTURE
    ax.imshow(img, interpolation="nearest")
    if G and G < n:
        _borders(ax, n, G, shifted)
    ticks = range(0, n, max(1, n // 8))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_title(title)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")


def mask_legend(future: bool = True, shifted: bool = True, added: bool = False) -> list:
    """Legend handles for `draw_mask` figures (pass to fig.legend)."""
    handles = [Patch(facecolor=READ, edgecolor="gray", label="reads (j ≤ i)")]
    if added:
        handles.append(Patch(facecolor=ADDED, edgecolor="gray", label="added by the other heads"))
    if future:
        handles.append(Patch(facecolor=FUTURE, edgecolor="gray", label="reads the future (j > i)"))
    handles += [Patch(facecolor=MASKED, edgecolor="gray", label="masked"),
                plt.Line2D([], [], color="black", lw=1, label="pattern 1 border")]
    if shifted:
        handles.append(plt.Line2D([], [], color="black", lw=1, ls="--", label="pattern 2 border"))
    return handles


def pair_fraction(pattern: str, n: int, G: int, n_heads: int = 4, variant: str = "split") -> float:
    """Query–key pairs a pattern reads, averaged over the heads, as a fraction of full causal attention's n(n+1)/2."""
    pairs = attention_mask(pattern, n, G, n_heads, variant=variant).sum(dim=(1, 2)).float().mean().item()
    return pairs / (n * (n + 1) // 2)


def draw_pattern(pattern: str = "s2", n: int = 32, G: int = 8, n_heads: int = 4, variant: str = "split",
                 layer_idx: int = 0, title: str | None = None, n_sink: int = 4):
    """Every head's mask under `pattern` and, last, their union (orange: pairs only the other heads add to head 0's).
    An impossible setting (n not a multiple of G, heads not divisible into the pattern's chunks…) draws the error."""
    try:
        masks = attention_mask(pattern, n, G, n_heads, variant=variant, layer_idx=layer_idx, n_sink=n_sink)
    except ValueError as error:
        fig, ax = plt.subplots(figsize=(7, 1.4))
        ax.text(0.5, 0.5, f"{pattern}, n = {n}, G = {G}, {n_heads} heads:\n{error}", ha="center", va="center",
                wrap=True)
        ax.axis("off")
        return fig
    chunk = n_heads // head_chunks(pattern)
    fig, axes = plt.subplots(1, n_heads + 1, figsize=(max(7.0, 2.3 * (n_heads + 1)), 3.3), squeeze=False)
    for h, ax in enumerate(axes[0, :-1]):
        c = h // chunk
        draw_mask(ax, masks[h], G, c in SHIFTED_CHUNKS.get(pattern, ()), title=f"head {h}: {CHUNK_NAMES[pattern][c]}")
    union, first = masks.any(0), masks[0]
    ax = axes[0, -1]
    draw_mask(ax, union, G, title=f"union: {union.sum().item() / (n * (n + 1) // 2):.2f} of full's pairs")
    img = ax.get_images()[0].get_array().copy()
    img[(union & ~first).numpy()] = ADDED
    ax.get_images()[0].set_data(img)
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    fig.legend(handles=mask_legend(added=True), loc="lower center", ncol=6 if n_heads > 2 else 3, frameon=False)
    fig.suptitle(title or f"pattern {pattern!r}, variant {variant!r}: n = {n}, G = {G}, {n_heads} heads")
    fig.tight_layout(rect=(0, 0.12 if n_heads > 2 else 0.2, 1, 1))
    return fig


# Algorithm 1 as token strips --------------------------------------------------------------------------------------
def token_groups(n: int, G: int, variant: str = "split", shifted: bool = True) -> list[list[int]]:
    """The groups of pattern 2 (`shifted`) or pattern 1, each listing its tokens in the order attention sees them
    (causal in that order). roll / roll_up use the package's own roll (`attention._shift`, Algorithm 1)."""
    if variant not in S2_VARIANTS:
        raise ValueError(f"variant {variant!r} is unknown; expected one of {S2_VARIANTS}")
    s, t = G // 2, torch.arange(n).view(1, 1, n, 1)
    if not shifted:
        order = t
    elif variant in ("roll", "roll_up"):
        order = _shift(t, s if variant == "roll" else -s)
    elif variant == "swap":  # roll's groups, the wrapped one ordered [0, s) then [n − s, n)
        order = torch.cat([t[:, :, s:n - s], t[:, :, :s], t[:, :, n - s:]], dim=2)
    else:  # split: two half groups at the ends, no wrap-around
        middle = group(t[:, :, s:n - s], G).flatten(1).tolist() if n > G else []
        return [list(range(s))] + middle + [list(range(n - s, n))]
    return group(order, G).flatten(1).tolist()


def _strip(ax, y: float, groups: list[list[int]], colors: dict, label: str, row: str, gap: float = 0.0):
    """One row of tokens, group after group, `gap` cells between groups; each cell's gid is 'row:token'."""
    x = 0.0
    for g in groups:
        for tok in g:
            ax.add_patch(Rectangle((x, y), 0.92, 0.8, facecolor=colors[tok], edgecolor="white", gid=f"{row}:{tok}"))
            ax.text(x + 0.46, y + 0.4, str(tok), ha="center", va="center", fontsize=7)
            x += 1
        x += gap
    ax.text(-0.6, y + 0.4, label, ha="right", va="center", fontsize=8)


def group_colors(groups: list[list[int]]) -> dict[int, tuple]:
    """token → the colour of its group (a qualitative palette, group by group)."""
    palette = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]
    return {tok: palette[k % len(palette)] for k, g in enumerate(groups) for tok in g}


def draw_token_strips(n: int = 16, G: int = 4, variants=("roll", "split")):
    """Algorithm 1 step by step (Fig. 2) for the shifted heads, one row of strips per variant, its mask beside:
    tokens coloured by their pattern-2 group; for roll: roll(−G/2) → groups → roll back (+G/2)."""
    fig, axes = plt.subplots(len(variants), 2, figsize=(12, 2.6 * len(variants)), squeeze=False,
                             gridspec_kw={"width_ratios": [3.2, 1]})
    for (ax, ax_mask), variant in zip(axes, variants):
        groups = token_groups(n, G, variant)
        colors = group_colors(groups)
        p1 = token_groups(n, G, variant, shifted=False)
        greys = {t: ("#d9d9d9", "#969696")[k % 2] for k, g in enumerate(p1) for t in g}  # not pattern 2's colours
        rows = [(p1, greys, "pattern 1 heads: groups of G", "p1", 0.6)]
        rows.append(([list(range(n))], colors, "pattern 2 heads: tokens", "tokens", 0))
        if variant in ("roll", "roll_up"):
            rolled = [tok for g in groups for tok in g]
            rows.append(([rolled], colors, f"roll({'−' if variant == 'roll' else '+'}G/2)", "rolled", 0))
        rows.append((groups, colors, "groups (attend inside)", "groups", 0.6))
        if variant in ("roll", "roll_up"):
            rows.append(([list(range(n))], colors, "roll back", "back", 0))
        for r, (gs, cols, label, row, gap) in enumerate(rows):
            _strip(ax, -1.1 * r, gs, cols, label, row, gap)
        ax.set_xlim(-0.2, n + 0.6 * (len(groups) - 1) + 0.2)
        ax.set_ylim(-1.1 * 5 + 0.1, 1.0)  # five rows' height for every variant, so the strips line up
        ax.axis("off")
        ax.set_title(f'variant="{variant}": G = {G}, shift G/2 = {G // 2}', loc="left")
        draw_mask(ax_mask, attention_mask("shift_all", n, G, 1, variant=variant)[0], G, shifted=True,
                  title=f"pattern 2 mask ({variant})")
    fig.tight_layout()
    return fig


# how far information travels, and what heads attend to ------------------------------------------------------------
def _reach(pattern: str, n: int, G: int, variant: str = "split"):
    """Yields R_1, R_2, …: R_L[i, j] = a path j → i exists through L layers, each reading the union of its heads'
    masks (the boolean L-th power; the residual stream keeps the diagonal)."""
    R = torch.eye(n)
    layer = 0
    while True:
        U = attention_mask(pattern, n, G, head_chunks(pattern), variant=variant, layer_idx=layer).any(0).float()
        R = ((U @ R) > 0).float()
        layer += 1
        yield R.bool()


def reachability(pattern: str, n: int, G: int, layers: int, variant: str = "split") -> list[torch.Tensor]:
    """[R_1 … R_layers], (n, n) bool each: which token j can influence token i after L layers of `pattern`.
    Counts paths, not how much information a trained model moves along them (§3.2's "information flow")."""
    gen = _reach(pattern, n, G, variant)
    return [next(gen) for _ in range(layers)]


def layers_to_cover(pattern: str, n: int, G: int, max_layers: int = 32, variant: str = "split") -> int | None:
    """The fewest layers after which the last token has a path from every token; None if not within max_layers."""
    for L, R in zip(range(1, max_layers + 1), _reach(pattern, n, G, variant)):
        if R[-1].all():
            return L
    return None


def draw_reach(n: int = 64, G: int = 16, layers: int = 10, shown=(1, 2, 4, 7)):
    """Left: tokens the last token can read after L layers, full vs pattern 1 vs S2-Attn. Right: S2-Attn's
    reachability maps after the `shown` layer counts (lines: pattern 1's borders)."""
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(3.6 + 2.5 * len(shown), 3.3),
                             gridspec_kw={"width_ratios": [1.6] + [1] * len(shown)})
    L = np.arange(1, layers + 1)
    for pattern, marker, label in (("full", "-", "full attention"), ("short", "o-", "pattern 1 only (short)"),
                                   ("s2", "s-", "S2-Attn (split)")):
        axes[0].plot(L, [int(R[-1].sum()) for R in reachability(pattern, n, G, layers)], marker,
                     color=color(pattern), label=label)
    axes[0].axhline(G, color="gray", ls=":", lw=1)
    axes[0].text(layers, G + 1.5, "one group", ha="right", color="gray")
    axes[0].set(xlabel="number of layers L", ylabel="tokens the last token can read", xticks=L,
                title=f"Receptive field (n = {n}, G = {G})")
    axes[0].legend()
    maps = reachability("s2", n, G, max(shown))
    for ax, k in zip(axes[1:], shown):
        ax.imshow(maps[k - 1], cmap=plt.matplotlib.colors.ListedColormap(["white", color("s2")]),
                  interpolation="nearest")
        _borders(ax, n, G, False)
        ax.set(title=f"S2-Attn, {k} layer{'s' if k > 1 else ''}", xlabel="source token j")
    axes[1].set_ylabel("token i")
    fig.tight_layout()
    return fig


def mean_distance(layer_maps: list[torch.Tensor]) -> np.ndarray:
    """Expected |i − j| under each head's attention probabilities, averaged over queries and the batch:
    (layers, heads), from `Llama.attention_maps`' list of (b, h, n, n) tensors."""
    n = layer_maps[0].shape[-1]
    i = torch.arange(n)
    gap = (i[:, None] - i[None, :]).abs().to(layer_maps[0].dtype)
    return torch.stack([(p * gap).sum(-1).mean(dim=(0, 2)) for p in layer_maps]).numpy()


def draw_probs(ax, p: torch.Tensor, G: int | None = None, log: bool = False, max_pixels: int = 256):
    """One (n, n) map of attention probabilities, max-pooled to at most `max_pixels` a side, zeros (masked) white;
    lines at multiples of G. Returns the image, for a colorbar."""
    n = p.shape[-1]
    pool = -(-n // max_pixels)
    img = torch.nn.functional.max_pool2d(p[None, None].float(), pool)[0, 0] if pool > 1 else p.float()
    cmap = plt.get_cmap("magma_r" if log else "Purples").with_extremes(bad="white")
    norm = LogNorm(vmin=1e-4, vmax=1.0) if log else PowerNorm(0.5, vmin=0, vmax=1)
    im = ax.imshow(img.masked_fill(img == 0, float("nan")).numpy(), cmap=cmap, norm=norm, interpolation="nearest",
                   extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    if G and G < n:
        _borders(ax, n, G, False, color_="tab:blue")
    ax.set_xlabel("key position j")
    return im


# the interactive explorer -----------------------------------------------------------------------------------------
def _show(**settings) -> None:
    draw_pattern(**settings)
    plt.show()


def mask_explorer(pattern: str = "s2", n: int = 32, G: int = 8, n_heads: int = 4, variant: str = "split",
                  n_sink: int = 4):
    """An ipywidgets explorer of `attention_mask`: pattern, variant, n, G, the number of heads and of sink tokens (the
    sink patterns of issue 16: short_sink, s2_sink); redraws
    `draw_pattern` on every change. Needs a running kernel (a plain viewer shows nothing: draw a static figure too)."""
    import ipywidgets as w

    controls = {"pattern": w.Dropdown(options=PATTERNS, value=pattern, description="pattern"),
                "variant": w.Dropdown(options=S2_VARIANTS, value=variant, description="variant"),
                "n": w.IntSlider(value=n, min=8, max=64, step=8, description="n"),
                "G": w.IntSlider(value=G, min=2, max=32, step=2, description="G"),
                "n_heads": w.Dropdown(options=[1, 2, 4, 8], value=n_heads, description="heads"),
                "n_sink": w.IntSlider(value=n_sink, min=1, max=16, step=1, description="sinks")}
    class Explorer(w.VBox):
        def __repr__(self):  # what a viewer without a kernel prints in place of the widget
            return "mask explorer (interactive: run the notebook in Jupyter to move its controls)"

    out = w.interactive_output(lambda **kw: _show(**kw), controls)
    box = Explorer([w.HBox([controls["pattern"], controls["variant"], controls["n_heads"]]),
                  w.HBox([controls["n"], controls["G"], controls["n_sink"]]), out])
    box.controls = controls
    return box
