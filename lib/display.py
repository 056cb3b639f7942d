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
    chapter does not store is an error, never an empty cell."""
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
            missing = [k for k in row["ours"] if k not in cache[ch]]
            if missing:
                raise KeyError(f"{ch}.ipynb stores no glued value {', '.join(missing)} (results page row "
                               f"{row['result']!r}); execute the chapter or fix the spec")
            ours = "; ".join((f"{label}: " if label else "") + cache[ch][k] for k, label in row["ours"].items())
            cells = [str(x).replace("|", "\\|") for x in (row["result"], row["paper"], ours, scale[ch])]
            lines.append(f"| {' | '.join(cells)} | {{doc}}`{row.get('where', ch)} <{ch}>` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
