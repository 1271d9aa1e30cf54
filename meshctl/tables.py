"""Tables that never break a word: rich's layout when it breaks none, else whole words.

CI logs and pipes are 80 columns wide; object names such as
``istio-system/istio-eastwestgateway`` must stay whole there (folded at most after a
``/``), or a reader cannot search for them.  :class:`WholeWordTable` draws exactly what
rich's :class:`~rich.table.Table` draws whenever that breaks no word; otherwise it picks
the column widths itself, and when even whole words do not fit, it switches to a list
layout (``header: value`` lines per row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text


def _words(line: str) -> list[tuple[int, int]]:
    """(start, end) of every run of non-blank characters in ``line``."""
    spans, start = [], None
    for i, ch in enumerate(line + " "):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    return spans


def _pieces(word: str) -> list[str]:
    """``word`` cut after every ``/``: the only places a word may fold."""
    parts = word.split("/")
    return [p + "/" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _longest(text: str, fold_slash: bool) -> int:
    """The widest unbreakable run in ``text``: a word, or a piece of one at ``/``."""
    best = 0
    for word in text.split():
        best = max([best] + ([cell_len(p) for p in _pieces(word)] if fold_slash
                             else [cell_len(word)]))
    return best


def _hard_fold(line: str, start: int, end: int, width: int) -> list[tuple[int, int]]:
    """Last resort, for a piece wider than the whole column: cut it by cells."""
    spans, begin, used = [], start, 0
    for i in range(start, end):
        w = cell_len(line[i])
        if used + w > width and i > begin:
            spans.append((begin, i))
            begin, used = i, 0
        used += w
    spans.append((begin, end))
    return spans


def _split_word(line: str, start: int, end: int, width: int) -> list[tuple[int, int]]:
    """A word too wide for ``width`` as runs that fit, cut only after ``/`` if it can be."""
    spans, begin = [], start
    for piece in _pieces(line[start:end]):
        stop = begin + len(piece)
        spans.extend(_hard_fold(line, begin, stop, width) if cell_len(piece) > width
                     else [(begin, stop)])
        begin = stop
    merged: list[tuple[int, int]] = []
    for span in spans:  # put pieces back together while they fit: "a/b/" rather than "a/", "b/"
        if merged and cell_len(line[merged[-1][0]:span[1]]) <= width:
            merged[-1] = (merged[-1][0], span[1])
        else:
            merged.append(span)
    return merged


def _wrap_line(line: str, width: int) -> list[tuple[int, int]]:
    """Word-wrap one line to ``width`` cells; a word wider than that folds at ``/``."""
    lines: list[tuple[int, int]] = []
    for start, end in _words(line):
        runs = ([(start, end)] if cell_len(line[start:end]) <= width
                else _split_word(line, start, end, width))
        for run_start, run_end in runs:
            if lines and cell_len(line[lines[-1][0]:run_end]) <= width:
                lines[-1] = (lines[-1][0], run_end)
            else:
                lines.append((run_start, run_end))
    return lines or [(0, 0)]


def fold(text: Text, width: int) -> Text:
    """``text`` wrapped to ``width`` cells at blanks (and ``/`` in words wider than that).

    Styles are kept. Lines it makes are no wider than ``width``, so rich, handed the
    result in a column of that width, draws it as it is.
    """
    lines: list[Text] = []
    offset = 0
    for line in text.plain.split("\n"):
        for start, end in _wrap_line(line, max(width, 1)):
            lines.append(text[offset + start:offset + end])
        offset += len(line) + 1
    return text.blank_copy("\n").join(lines)


class WholeWordTable(Table):
    """A rich ``Table`` that keeps words (and so object names) whole when space is short.

    rich shrinks the widest columns until the table fits and then folds any word wider
    than its column mid-word ("istio-system/istio-eastwe" over "stgateway"). This table
    draws exactly as rich does whenever that layout breaks no word. Otherwise it picks
    column widths itself, shrinking the widest column first but never below its longest
    word, then (if that is still too wide) below its longest piece of a word cut at ``/``;
    and where even that does not fit, it lists the rows one field a line instead.

    It leans on rich's own (underscored) measuring helpers of ``Table`` so that "as rich
    draws it" stays exact; they have been there, unchanged, since rich 13.
    """

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.columns:
            yield from super().__rich_console__(console, options)
            return
        max_width = self.width if self.width is not None else options.max_width
        inner = max_width - self._extra_width
        cells = [[self._text(console, c) for c in (col.header, *col.cells)]
                 for col in self.columns]
        if any(t is None for col in cells for t in col):
            yield from super().__rich_console__(console, options)  # not text: rich's way
            return
        texts: list[list[Text]] = [[t for t in col if t is not None] for col in cells]
        pads = [self._get_padding_width(i) for i in range(len(self.columns))]
        ours = options.update_width(inner)
        natural = [self._measure_column(console, ours, c).maximum for c in self.columns]
        words = self._minima(texts, pads, natural, fold_slash=False)
        if inner > 0 and all(w >= m for w, m in
                             zip(self._calculate_column_widths(console, ours), words,
                                 strict=True)):
            yield from super().__rich_console__(console, options)
            return
        for fold_slash in (False, True):
            minima = self._minima(texts, pads, natural, fold_slash=fold_slash)
            if sum(minima) <= inner:
                widths = self._shrink(natural, minima, inner)
                yield from Table.__rich_console__(self._fixed(texts, pads, widths),
                                                  console, options)
                return
        yield from self._listing(console, texts, max_width)

    @staticmethod
    def _text(console: Console, cell: RenderableType) -> Text | None:
        if isinstance(cell, Text):
            return cell
        if isinstance(cell, str):
            return console.render_str(cell, highlight=False)
        return None

    @staticmethod
    def _minima(texts: list[list[Text]], pads: list[int], natural: list[int],
                fold_slash: bool) -> list[int]:
        return [min(nat, pad + max(_longest(t.plain, fold_slash) for t in col))
                for col, pad, nat in zip(texts, pads, natural, strict=True)]

    @staticmethod
    def _shrink(natural: list[int], minima: list[int], inner: int) -> list[int]:
        """Narrow the widest column (that may still narrow) a cell at a time until it fits."""
        widths = list(natural)
        for _ in range(sum(widths) - inner):
            i = max((i for i, w in enumerate(widths) if w > minima[i]),
                    key=lambda i: widths[i])
            widths[i] -= 1
        return widths

    def _fixed(self, texts: list[list[Text]], pads: list[int], widths: list[int]) -> Table:
        """A plain copy of this table with these column widths and its cells pre-folded."""
        table = Table.__new__(Table)
        table.__dict__.update(self.__dict__)
        table.columns = []
        for column, col, pad, width in zip(self.columns, texts, pads, widths, strict=True):
            content = width - pad
            table.columns.append(dataclasses.replace(
                column, width=content, header=fold(col[0], content),
                _cells=[fold(t, content) for t in col[1:]]))
        return table

    def _listing(self, console: Console, texts: list[list[Text]],
                 width: int) -> RenderResult:
        """Too narrow for columns: per row, ``header: value`` lines (empty cells left out)."""
        if self.title:
            title = (self._text(console, self.title) or Text(str(self.title))).copy()
            title.stylize(self.title_style or "table.title")
            yield fold(title, width)
        header_style = console.get_style(self.header_style or "table.header")
        for row in range(len(self.rows)):
            for index, col in enumerate(texts):
                if not col[row + 1].plain.strip():
                    continue
                indent = "" if index == 0 else "  "
                key = Text(indent) + Text(col[0].plain + ":", style=header_style)
                yield from _field(key, col[row + 1], width)
        if self.caption:
            yield fold(self._text(console, self.caption) or Text(str(self.caption)), width)


def _field(key: Text, value: Text, width: int) -> Iterable[Text]:
    """``key value`` with the value folded beside the key, or under it if too narrow there."""
    room = width - key.cell_len - 1
    if room >= max(_longest(value.plain, fold_slash=True), 1):
        lines = fold(value, room).split("\n")
        yield key + " " + lines[0]
        for line in lines[1:]:
            yield Text(" " * (key.cell_len + 1)) + line
        return
    yield key
    for line in fold(value, width - 4).split("\n"):
        yield Text("    ") + line
