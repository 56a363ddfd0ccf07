"""Every run's recovery during fine-tuning (the trainer's whole-window validation perplexity), and the loss against
position in the window, for any table's results."""

from __future__ import annotations

from .compare import plain_log
from .plan import continued_from, group_of
from .record import window_ppl


def _panels(k: int):
    """A figure of k panels sharing the y axis: one row of up to four, else rows of three (table1_lr's six rates).
    Returns the figure and its k axes in reading order (the empty slots of the last row removed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = k if k <= 4 else 3
    rows = -(-k // cols)
    fig = Figure(figsize=(max(3.6 * cols, 5.0), 3.4 * rows), dpi=90)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, sharey=True, squeeze=False).flat)
    for ax in axes[k:]:
        ax.remove()
    return fig, axes[:k]


def _run_label(config: dict, steps: bool = False) -> str:
    """A run's name in the curves' legends; `steps`: with its budget (a table with several, table1_budget)."""
    method = {"full": "full FT", "lora": "LoRA", "lora_plus": "LoRA+"}[config["method"]]
    parts = [method, {"full": "full attention", "s2": "S2-Attn"}.get(config["attention"], config["attention"])]
    if config["attention"] == "s2" and config.get("s2_variant", "split") != "split":
        parts.append(config["s2_variant"])
    ratio = config.get("group_size_ratio", 0.25)
    if config["attention"] != "full" and abs(ratio - 0.25) > 1e-9:  # Table 7: the group size tells the runs apart
        parts.append(f"group {group_of(config)}")
    if config.get("full_attention_every"):  # the remedies of table1_sink
        parts.append(f"every {config['full_attention_every']}th step full")
    if config.get("group_schedule", "none") != "none":
        parts.append(f"groups {config['group_schedule']}")
    if config.get("passkey_share"):  # Figure 4's diagnostic: passkey documents in the fine-tuning data
        parts.append(f"{config['passkey_share']:.0%} passkey docs")
    if config["method"] != "full" and config.get("lora_r") != 8:
        parts.append(f"r={config['lora_r']}")
    if continued_from(config):  # table1_from_full: trained on from another run's final model
        parts.append("continued")
    parts += [f"{config['seq_len']} tokens", f"lr {config['lr']:g}"] + ([f"{config['steps']} steps"] if steps else [])
    label = ", ".join(parts)
    if config.get("train_embed") is False or config.get("train_norm") is False:  # Table 2's single additions
        label += f" (embed {config['train_embed']}, norm {config['train_norm']})"
    return label


def curves(result: dict, seeds: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every run of the table: its validation perplexity (full attention, train's whole-window mean) every
    steps/10 steps, from step 0 (the base with the run's interpolation, where the table recorded it) to the end.
    With several seeds each run's label ends in its seed; `seeds=False` gives one line per setting instead, the mean
    over its seeds."""
    configs = {c["run"]: c for c in result["settings"]["train_configs"]}
    several, budgets = len(result["settings"].get("seeds", [0])) > 1, _budgets(result)
    out: dict[str, list] = {}
    for key, run in result["settings"]["runs"].items():
        label = _run_label(configs[key], budgets)
        if several and seeds:
            label += f", seed {configs[key].get('seed', 0)}"
        out.setdefault(label, []).append([(m["step"], window_ppl(m)) for m in run["curve"]])
    return {label: [(pts[0][j][0], sum(p[j][1] for p in pts) / len(pts)) for j in range(min(map(len, pts)))]
            for label, pts in out.items()}


def curve_gaps(result: dict, reference: str = "full") -> list[dict]:
    """How a table's gaps build up during training: each setting's validation perplexity (the curves above) against
    the `reference` setting's at the same step, context, rate, budget and seed, in % (paired by seed), then the mean
    and standard deviation over seeds. Rows {setting, context, lr, steps, step, gap, gap_sd, seeds}, for tables whose
    rows have a setting and a context (table1; table1_lr's rows also have a rate, table1_budget's a budget: None where
    they have none)."""
    from .compare import sd

    def key(r):
        return r["context"], r.get("lr"), r.get("steps"), r["seed"]

    curve = {r["run"]: [(m["step"], window_ppl(m)) for m in result["settings"]["runs"][r["run"]]["curve"]]
             for r in result["rows"]}
    ref = {key(r): curve[r["run"]] for r in result["rows"] if r["setting"] == reference}
    paired: dict[tuple, list[float]] = {}
    for r in result["rows"]:
        if r["setting"] == reference or key(r) not in ref:
            continue
        for (step, ppl), (ref_step, ref_ppl) in zip(curve[r["run"]], ref[key(r)]):
            assert step == ref_step, (step, ref_step)
            paired.setdefault((r["setting"], *key(r)[:3], step), []).append(ppl / ref_ppl - 1)
    return [{"setting": k[0], "context": k[1], "lr": k[2], "steps": k[3], "step": k[4], "gap": sum(v) / len(v),
             "gap_sd": sd(v), "seeds": len(v)} for k, v in paired.items()]


def plot_curve_gaps(result: dict, reference: str = "full"):
    """`curve_gaps` drawn: one panel per context (and rate and budget, where the rows have them), one line per
    setting (the mean over seeds, ± one standard deviation shaded), the gap to the reference at every curve point."""
    from ..plotting import color

    rows = curve_gaps(result, reference)

    def panel(r):
        return r["context"], r["lr"] or 0.0, r["steps"] or 0

    panels = sorted({panel(r) for r in rows})
    fig, axes = _panels(len(panels))
    for ax, (n, lr, budget) in zip(axes, panels):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            pts = sorted((r["step"], 100 * r["gap"], 100 * (r["gap_sd"] or 0)) for r in rows
                         if r["setting"] == setting and panel(r) == (n, lr, budget))
            steps, gap, err = ([p[i] for p in pts] for i in range(3))
            ax.plot(steps, gap, marker=".", color=color(setting), label=setting)
            ax.fill_between(steps, [g - e for g, e in zip(gap, err)], [g + e for g, e in zip(gap, err)],
                            color=color(setting), alpha=0.2, lw=0)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"n = {n}" + (f", lr {lr:g}" if lr else "") + (f", {budget} steps" if budget else ""), fontsize=9)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(f"validation perplexity vs {reference} (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['name']}: the gap to {reference} during fine-tuning (whole windows, full attention; mean "
                 "± sd over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def _budgets(result: dict) -> bool:
    """Whether the table's runs have several budgets (table1_budget), so their labels must name theirs."""
    return len({c["steps"] for c in result["settings"]["train_configs"]}) > 1


def _color(config: dict) -> str | None:
    """A run's colour in every figure (plotting.SETTING_COLORS): its training attention, its remedy, or LoRA+."""
    from ..plotting import SETTING_COLORS

    if not config:
        return None
    name = config["attention"]
    if config.get("full_attention_every"):
        name = "s2_full_steps"
    elif config.get("group_schedule", "none") != "none":
        name = "s2_grow"
    elif config["method"] != "full" and config["attention"] == "s2":
        name = config["method"]
        if name == "lora_plus" and not (config.get("train_embed", True) and config.get("train_norm", True)):
            name = "lora_plus_embed" if config.get("train_embed", True) else "lora_plus_norm"  # Table 2's rows
    return SETTING_COLORS.get(name)


def plot_curves(result: dict, select=None, seeds: bool = False):
    """Validation perplexity against fine-tuning step, one line per setting, the mean over its seeds (`seeds=True`:
    one line per run); `select(label)` keeps a subset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    configs = {_run_label(c, _budgets(result)): c for c in result["settings"]["train_configs"]}
    styles = sorted({(c["seq_len"], c["lr"], c["steps"]) for c in configs.values()})  # per context, rate, budget
    lines = {label: pts for label, pts in curves(result, seeds).items() if select is None or select(label)}
    for label, pts in lines.items():
        config = configs.get(label.rsplit(", seed ", 1)[0], {})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label, color=_color(config),
                ls=("-", "--", ":", "-.")[styles.index((config["seq_len"], config["lr"], config["steps"])) % 4]
                if config else "-")
    plain_log(ax)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("validation perplexity (whole windows, full attention)")
    ax.set_title(f"{result['name']}: validation perplexity during fine-tuning", fontsize=9)
    ax.grid(alpha=0.3)
    if len(lines) > 6:  # a long legend goes beside the axes, where it hides no curve
        fig.set_size_inches(11, 4.4)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _setting_color(name) -> str | None:
    from ..plotting import SETTING_COLORS

    return SETTING_COLORS.get(name) if isinstance(name, str) else None


def plot_loss_by_position(result: dict, panel: str = "context", line: str = "setting", bins: str = "loss_bins",
                          **match):
    """Mean next-token loss (full attention) against position in the window: 16 bins (`loss_bins`) where the results
    have them, else the 4 quarters; one panel per value of `panel` ("context" in table1 and table7, "lr" in
    table1_lr, "steps" in table1_budget), one line per value of `line` ("setting"; "group" in table7), over the rows
    whose fields equal `match` (table1_budget: `context=2048`): where in the window short or S2-Attn training loses
    against full attention. `bins`: the rows' field to draw ("loss_bins_stretched": table1_budget's rows tested with
    their interpolation stretched further). A dotted line marks the group size where a panel has one."""
    rows = [r for r in result["rows"] + result.get("starting_point", [])  # table1: the base with PI, before FT
            if all(r.get(k) == v for k, v in match.items()) and (bins in r or "loss_quarters" in r)]
    if not rows:
        raise ValueError(f"{result['name']}: no row has {match}")
    values = sorted({r[panel] for r in rows})
    lines = list(dict.fromkeys(r[line] for r in rows))
    if "base+PI" in lines:  # the starting point first, drawn in gray
        lines = ["base+PI"] + [x for x in lines if x != "base+PI"]
    fig, axes = _panels(len(values))
    for ax, value in zip(axes, values):
        groups = set()
        for i, name in enumerate(lines):
            members = [r for r in rows if r[panel] == value and r.get(line) == name]
            if not members:
                continue
            if all(bins in m for m in members):
                key = bins
            elif bins == "loss_bins":  # files made before the 16 bins
                key = "loss_quarters"
            else:
                raise ValueError(f"{result['name']}: not every row has {bins!r}")
            k, n = len(members[0][key]), members[0]["context"]
            mean = [sum(m[key][j] for m in members) / len(members) for j in range(k)]
            style = dict(color="gray", ls="--", lw=1) if name == "base+PI" else {"color": _setting_color(name)}
            marker = "x" if name == "base+PI" else "os^vD<>p"[(i - ("base+PI" in lines)) % 8]
            ax.plot([(j + 0.5) / k for j in range(k)], mean, marker=marker, ms=4, label=str(name), **style)
            groups |= {m["group_size"] for m in members if m.get("group_size")}
        group = groups.pop() if len(groups) == 1 else None
        if group:
            ax.axvline(group / n, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("position in the window (fraction of n)")
        title = f"n = {n}" + (f", group {group}" if group else "")
        if panel != "context":  # a rate or a budget; table1_from_full's start by name
            title += f"; {panel} {value}" if isinstance(value, str) else f"; {panel} {value:g}"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("mean next-token loss (nats)" + ("" if panel == "window" else ", full attention"))
    axes[0].legend(fontsize=8)
    note = "" if bins == "loss_bins" else f" ({bins})"
    fig.suptitle(f"{result['name']}: loss by position in the window{note}", fontsize=9)
    fig.tight_layout()
    return fig
