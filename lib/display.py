"""Formatting of results for the chapters: value ± error strings and tables that render as
HTML in notebooks and in the book (myst-nb shows Markdown output as plain text)."""
from __future__ import annotations

import math

import numpy as np


def pm(value, error, sig: int = 2) -> str:
    """'value ± error' with the error rounded to ``sig`` significant digits."""
    if not (np.isfinite(error) and error > 0):
        return f"{value:.4g} ± {error:.2g}"
    exponent = int(math.floor(math.log10(error)))
    if exponent < -8 and abs(value) < 1e-6:  # e.g. e^{−ΔH} of a hopeless step: (4.2 ± 4.2)e-47, not 0.000…042
        scale = 10.0 ** exponent
        return f"({value / scale:.{sig - 1}f} ± {error / scale:.{sig - 1}f})e{exponent}"
    digits = max(0, sig - 1 - exponent)
    return f"{value:.{digits}f} ± {error:.{digits}f}"


def paren(value, error, sig: int = 2) -> str:
    """'value(error)', the compact notation, with ``sig`` significant digits of the error."""
    if not (np.isfinite(error) and error > 0):
        return f"{value:.4g}"
    digits = max(0, sig - 1 - int(math.floor(math.log10(error))))
    e = round(error * 10**digits)
    if e >= 10**sig and digits > 0:  # the error rounded up to the next decade
        digits -= 1
        e = round(error * 10**digits)
    return f"{value:.{digits}f}({e})"


class Table:
    """A table that shows as HTML in notebooks and in the book, and as aligned text elsewhere."""

    def __init__(self, header, rows):
        self.header, self.rows = [str(h) for h in header], [[str(c) for c in r] for r in rows]

    def _repr_html_(self):
        def esc(x):
            return x.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self):
        cols = [self.header] + self.rows
        w = [max(len(r[i]) for r in cols) for i in range(len(self.header))]
        return "\n".join("  ".join(c.ljust(n) for c, n in zip(r, w)) for r in cols)


def table(header, rows) -> None:
    """Display a :class:`Table` (in a notebook; prints elsewhere)."""
    from IPython.display import display

    display(Table(header, rows))


def scale_report(run: dict, paper: dict, what: str = "the paper's", header: str | None = None) -> bool:
    """Show which parameters of this run differ from ``paper`` (a table) and say plainly whether
    the outputs below come from a run at full scale. Returns True at full scale."""
    from IPython.display import HTML, display

    diff = [(k, run.get(k), v) for k, v in paper.items() if run.get(k) != v]
    if not diff:
        display(HTML(f"<p><b>Full-scale run:</b> every setting below is {what}.</p>"))
        return True
    display(HTML("<p><b>Reduced-scale run.</b> The outputs on this page come from the settings in the "
                 f"middle column, not {what} (right column); rerun the chapter with the default "
                 "parameters on a GPU for the full-scale result.</p>"))
    table(["parameter", "this run", header or f"{what} scale"], [[k, repr(a), repr(b)] for k, a, b in diff])
    return False


#: Upper-case names of a chapter that are not parameters of its result: the set-up's, and those that
#: change only speed (the device, threads; batch sizes, ``*_BATCH``).
NOT_SCALE = ("T_START", "REPO_URL", "ROOT", "DEVICE", "TORCH_THREADS")


def chapter_defaults(namespace: dict) -> dict:
    """The parameters a chapter's ``parameters`` cell sets, read at the end of that cell (before
    papermill's injected cell overrides them), for :func:`scale_report` to compare a run against:
    every upper-case name of ``namespace`` except :data:`NOT_SCALE` and the ``*_BATCH`` sizes."""
    return {k: v for k, v in dict(namespace).items()
            if k.isupper() and not k.endswith("_BATCH") and k not in NOT_SCALE}


GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value, fmt: str = "") -> None:
    """Store a computed value under ``name`` for the prose, where ``{glue:text}`name``` shows it
    (the myst-nb glue protocol, written here so that a chapter runs without myst-nb, e.g. on
    Colab): numbers and verdicts in the text then come from the cell that computed them. The
    value is shown as ``format(value, fmt)`` (strings as they are); nothing is displayed in the
    notebook (and nothing is returned, so a cell ending in glue shows no result)."""
    from IPython.display import display

    text = value if isinstance(value, str) else format(value, fmt)
    # stored as a Python string literal: myst-nb literal_evals the text, which would turn "0.960"
    # into the number 0.96
    display({GLUE_PREFIX + "text/plain": repr(text)}, raw=True,
            metadata={"scrapbook": {"name": str(name), "mime_prefix": GLUE_PREFIX}})


def verdict(ok: bool, met: str = "met", failed: str = "not met") -> str:
    """The one-word verdict of a requirement, decided by a cell from the numbers."""
    return met if ok else failed


# ---------------------------------------------------------------------------- the results page
def glued_values(notebook) -> dict:
    """The values a notebook's cells stored with :func:`glue`: ``{name: text}`` as the book
    shows them (read from the outputs of the committed notebook, not recomputed)."""
    import ast

    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            meta = o.get("metadata", {}).get("scrapbook")
            if meta and "name" in meta:
                raw = o.get("data", {}).get(meta.get("mime_prefix", GLUE_PREFIX) + "text/plain")
                if raw is not None:
                    raw = "".join(raw) if isinstance(raw, list) else raw
                    out[meta["name"]] = ast.literal_eval(raw)
    return out


def ran_at_reduced_scale(notebook) -> bool:
    """Whether a committed notebook's scale table (:func:`scale_report`) says its outputs come
    from a reduced-scale run."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return any("Reduced-scale run" in str(o.get("data", {}).get("text/html", ""))
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def results_page(spec, book_dir) -> str:
    """The book's results page (Markdown) from ``spec`` (the YAML file listing each paper result:
    its title, the paper's value, the chapter and the glue keys of ours) and the committed
    notebooks in ``book_dir``: every number on it is read from a chapter's outputs. A key that a
    chapter does not store is an error, never an empty cell. The "run" column says whether the
    chapter ran at the paper's scale (its scale table); a row with ``run: KEY`` takes it from the
    chapter's glued value ``KEY`` instead, for a chapter whose main result ran at the paper's scale
    while its side studies did not."""
    from pathlib import Path

    import yaml

    spec = yaml.safe_load(Path(spec).read_text())
    book = Path(book_dir)
    lines = [spec["title"], "", spec["intro"].strip(), ""]
    cache, scale = {}, {}
    for section in spec["sections"]:
        lines += [f"## {section['title']}", "", "| result | paper | ours | run | where |", "|---|---|---|---|---|"]
        for row in section["rows"]:
            ch = row["chapter"]
            if ch not in cache:
                cache[ch] = glued_values(book / f"{ch}.ipynb")
                scale[ch] = "reduced (CPU)" if ran_at_reduced_scale(book / f"{ch}.ipynb") else "paper's"
            missing = [k for k in [*row["ours"], *([row["run"]] if "run" in row else [])] if k not in cache[ch]]
            if missing:
                raise KeyError(f"{ch}.ipynb stores no glued value {', '.join(missing)} (results page row "
                               f"{row['result']!r}); execute the chapter or fix the spec")
            ours = "; ".join((f"{label}: " if label else "") + cache[ch][k] for k, label in row["ours"].items())
            run = cache[ch][row["run"]] if "run" in row else scale[ch]
            cells = [str(x).replace("|", "\\|") for x in (row["result"], row["paper"], ours, run)]
            lines.append(f"| {' | '.join(cells)} | {{doc}}`{row.get('where', ch)} <{ch}>` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------- the U-Net (paper Fig. 10)
def unet_layer_shapes(model, lattice_size: int) -> dict:
    """The (channels, L, L) shapes entering and leaving each block of a
    :class:`lib.diffusion.networks.LatticeUNet`, measured with forward hooks on a zero field of
    size ``lattice_size``: ``{"enc0": (in, out), …, "enc3", "dec0", "dec1", "dec2", "final"}``."""
    import torch

    shapes, hooks = {}, []
    blocks = ([(f"enc{i}", m) for i, m in enumerate(model.convs)] + [(f"dec{i}", m) for i, m in enumerate(model.tconvs)]
              + [("final", model.final)])
    for name, module in blocks:
        hooks.append(module.register_forward_hook(
            lambda mod, inp, out, name=name: shapes.__setitem__(name, (tuple(inp[0].shape[1:]), tuple(out.shape[1:])))))
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros((1, lattice_size, lattice_size), dtype=p.dtype, device=p.device),
                  torch.full((1,), 0.5, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def unet_diagram(model, lattice_size: int, ax=None):
    """Draw a lattice U-Net (the paper's Fig. 10) from the shapes its blocks really produce
    (:func:`unet_layer_shapes`): the encoder down the left (circular 3×3 convolutions), the decoder
    up the right (transposed or circular convolutions), skip connections across (concatenation),
    the time embedding added in every block, the output divided by σ_t. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    shapes = unet_layer_shapes(model, lattice_size)
    cfg = model.config
    strides = cfg["strides"]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 5.2))

    W, H = 0.55, 0.22  # half width and half height of a box

    def box(x, y, text, color):
        ax.add_patch(FancyBboxPatch((x - W, y - H), 2 * W, 2 * H, boxstyle="round,pad=0.02", fc=color,
                                    ec="k", lw=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(start, end, ls="-"):
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", lw=0.9, ls=ls, color="0.25",
                                                              shrinkA=0, shrinkB=0))

    def label(x, y, text, ha="left"):
        ax.text(x, y, text, fontsize=7, color="0.2", ha=ha, va="center")

    def shape(s):
        return f"{s[0]} × {s[1]} × {s[2]}"

    xin, xe, xd, xout = -1.9, 0.0, 3.0, 4.9
    box(xin, 0, "φ_t\n" + shape(shapes["enc0"][0]), "#eeeeee")
    for i in range(4):
        box(xe, -i, shape(shapes[f"enc{i}"][1]), "#cfe2f3")
        what = f"3×3 circ. conv, stride {strides[i]}\n+ emb t, GroupNorm, swish"
        if i == 0:
            arrow((xin + W, 0), (xe - W, 0))
            label((xin + xe) / 2, 0.42, what, ha="center")
        else:
            arrow((xe, -(i - 1) - H), (xe, -i + H))
            label(xe - 0.12, -i + 0.5, what, ha="right")
    for k in range(3):  # dec0 leaves level 3 for level 2, dec1 for level 1, dec2 for level 0
        level = 2 - k
        box(xd, -level, shape(shapes[f"dec{k}"][1]), "#f9e0c7")
        up = ("2×2 transp. conv, stride 2" if strides[level + 1] == 2 else "3×3 circ. conv") + "\n+ emb t, GN, swish"
        if k == 0:
            arrow((xe + W, -3), (xd, -level - H))
            label((xe + xd) / 2 + 0.25, -2.75, up)
        else:
            arrow((xd, -(level + 1) + H), (xd, -level - H))
            label(xd + 0.12, -level - 0.5, up)
        arrow((xe + W, -level), (xd - W, -level), ls="--")
        label((xe + xd) / 2, -level + 0.12, "concat (skip)", ha="center")
    box(xout, 0, "s_θ(φ_t, t)\n" + shape(shapes["final"][1]), "#d9ead3")
    arrow((xd + W, 0), (xout - W, 0))
    label((xd + xout) / 2, 0.42, ("2×2 transp. conv" if strides[0] == 2 else "3×3 circ. conv") + "\n÷ σ_t",
          ha="center")
    notes = ["time t → Gaussian Fourier features (dim %d) → dense → swish: 'emb t'" % cfg.get("embed_dim", 256)]
    if cfg.get("zero_mode_head"):
        notes.append("zero-mode head: U-Net output made mean-free; the zero mode from an MLP of (M_t, ln s₀)")
    if cfg.get("skip_var") is not None:
        notes.append("Gaussian skip: + score of Gaussian sites, −x/(Ξ(t) + v)")
    if cfg.get("odd"):
        notes.append("odd: s(φ) = ½[ŝ(φ) − ŝ(−φ)]")
    n_par = sum(p.numel() for p in model.parameters())
    notes.append(f"{n_par:,} parameters; channels {cfg['channels']}, strides {strides}, L = {lattice_size}")
    ax.text(xin - W, -3.45, "\n".join(notes), fontsize=7.5, va="top")
    ax.set_xlim(xin - 0.7, xout + 0.7)
    ax.set_ylim(-4.3, 0.8)
    ax.axis("off")
    return ax
