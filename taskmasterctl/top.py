"""`taskmasterctl top`: a live full-screen view of every job, like `pm2 monit` or `htop`.

    q quit   ↑↓ PgUp PgDn Home End select   / filter   r restart   s stop (each asks y/N first)

Once a second it sends one `status` request, on one connection, asking for the accounting (CPU
and memory) of the rows on the screen only: whatever the number of jobs, the daemon reads the
figures of at most a screenful of instances per second. A row's history (its sparklines) is
kept from the moment it is on the screen, for a minute.

The terminal is curses' (Python's own binding of ncurses): the terminfo database tells it what
each terminal can do, so it runs over ssh in an 80x24 xterm, a Linux console or tmux, draws
block characters only in a UTF-8 locale (ASCII otherwise), and without colours (a terminal that
has none, or NO_COLOR) marks the selected row with `>` and reverse video. No dependency: the
standard library has it on every Linux Python; rich has no keyboard input and textual would
bring a framework (and a second of start-up) for one screen.
"""
from __future__ import annotations

import curses
import json
import locale
import os
import time

from .client import ConnectionFailed
from .safetext import safe
from .session import EXIT_INVALID, Session
from .topmodel import History, Row, cells, rows_of, sparkline

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace

REFRESH = 1.0  # seconds between two status requests
KEY_WAIT_MS = 100  # how long a wait for a key lasts before the clock is looked at
MESSAGE_SECONDS = 5.0
FIXED = ((" STATE", 8), ("UPTIME", 6), ("RST", 3), ("HEALTH", 9), ("CPU%", 5), ("MEM", 6))
STATE_COLOUR = {"RUNNING": 1, "STARTING": 2, "STOPPING": 2, "WAITING": 2, "BACKOFF": 2, "FATAL": 3, "INVALID": 3}


def top(session: Session, args: Namespace) -> None:
    if session.as_json:  # a script gets what the first screen is made of
        reply = session.client.request("status", None, b'{"accounting":true}')
        session.report("top", None, reply)
        return
    if not (os.isatty(0) and os.isatty(1)):
        return session.complain("top needs a terminal (for a script: status --json)", EXIT_INVALID)
    locale.setlocale(locale.LC_ALL, "")
    try:
        curses.wrapper(lambda screen: Top(session, screen).run())
    except curses.error as exc:
        session.complain(f"top cannot use this terminal: {exc}", EXIT_INVALID)


def _single(jobs: list[dict], name: str) -> bool:
    return any(job["name"] == name and len(job.get("instances") or []) <= 1 for job in jobs)


class Top:
    def __init__(self, session: Session, screen: curses.window) -> None:
        self.session = session
        self.screen = screen
        self.unicode = "UTF-8" in locale.nl_langinfo(locale.CODESET).upper()
        self.colour = curses.has_colors() and "NO_COLOR" not in os.environ
        self.jobs: list[dict] = []
        self.rows: list[Row] = []
        self.history = History()
        self.selected = 0
        self.first = 0  # the first row on the screen
        self.pattern = ""
        self.prompt: str | None = None  # being typed: a filter ("/") or a y/N answer
        self.asking: tuple[str, str] | None = None  # (verb, selector) awaiting y/N
        self.message = ""
        self.message_until = 0.0
        self.problem = ""  # why the last refresh failed
        self.fetched = 0.0

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            curses.curs_set(0)
        except curses.error:  # a terminal that cannot hide its cursor (vt100) shows it: no harm
            pass
        self.screen.timeout(KEY_WAIT_MS)
        self.screen.keypad(True)
        if self.colour:
            curses.start_color()
            curses.use_default_colors()
            for pair, colour in ((1, curses.COLOR_GREEN), (2, curses.COLOR_YELLOW), (3, curses.COLOR_RED),
                                 (4, curses.COLOR_CYAN)):
                curses.init_pair(pair, colour, -1)
        while True:
            if time.monotonic() - self.fetched >= REFRESH:
                self.refresh()
            self.draw()
            key = self.screen.getch()
            if key != -1 and not self.key(key):
                return

    def refresh(self) -> None:
        """One status request: every job, the accounting of the rows on the screen."""
        self.fetched = time.monotonic()
        shown = self.rows[self.first:self.first + self.body_height()]
        # The instances on the screen (a job's own row adds up those of its instances shown).
        wanted = " ".join(f"{row.job}:{row.index}" if row.index is not None else row.job
                          for row in shown if row.index is not None or _single(self.jobs, row.job)) if self.rows else "*"
        try:
            reply = self.session.client.request("status", None, json.dumps({"accounting": wanted}).encode())
        except ConnectionFailed as exc:
            self.problem = str(exc)
            return
        if reply.response != "status":
            self.problem = reply.error or reply.response
            return
        self.problem = ""
        self.jobs = reply.value["jobs"]
        self.rows = rows_of(self.jobs, self.pattern)
        counted = {row.key for row in self.rows if row.cpu is not None}
        self.history.add([row for row in self.rows if row.key in counted])
        self.history.forget_except({row.key for row in self.rows})
        self.selected = min(self.selected, max(len(self.rows) - 1, 0))

    def key(self, key: int) -> bool:
        """Act on a key; False to quit."""
        if self.asking is not None:
            verb, target = self.asking
            self.asking = None
            if key in (ord("y"), ord("Y")):
                self.act(verb, target)
            else:
                self.say(f"{verb} {target}: not done")
            return True
        if self.prompt is not None:
            return self.filter_key(key)
        if key in (ord("q"), ord("Q"), 27):
            return False
        moves = {curses.KEY_UP: -1, ord("k"): -1, curses.KEY_DOWN: 1, ord("j"): 1,
                 curses.KEY_PPAGE: -self.body_height(), curses.KEY_NPAGE: self.body_height(),
                 curses.KEY_HOME: -len(self.rows), curses.KEY_END: len(self.rows)}
        if key in moves:
            self.selected = max(0, min(len(self.rows) - 1, self.selected + moves[key]))
        elif key == ord("/"):
            self.prompt = self.pattern
        elif key in (ord("r"), ord("s")) and self.rows:
            verb = "restart" if key == ord("r") else "stop"
            self.asking = (verb, self.rows[self.selected].key)
        elif key == curses.KEY_RESIZE:
            curses.update_lines_cols()
        return True

    def filter_key(self, key: int) -> bool:
        assert self.prompt is not None
        if key in (10, 13, curses.KEY_ENTER):
            self.pattern, self.prompt = self.prompt.strip(), None
            self.rows = rows_of(self.jobs, self.pattern)
            self.selected = self.first = 0
            self.fetched = 0.0  # the rows on the screen changed: their accounting now
        elif key == 27:
            self.prompt = None
        elif key in (curses.KEY_BACKSPACE, 127, 8):
            self.prompt = self.prompt[:-1]
        elif 32 <= key < 127:
            self.prompt += chr(key)
        return True

    def act(self, verb: str, target: str) -> None:
        wire = "restart-job" if verb == "restart" else verb
        try:
            reply = self.session.client.request(wire, target, b'{"report":true}', nowait=True)
        except ConnectionFailed as exc:
            return self.say(f"{verb} {target}: {exc}")
        outcome = reply.error.splitlines()[0] if reply.error else reply.response
        self.say(f"{verb} {target}: {safe(outcome)}")
        self.fetched = 0.0

    def say(self, message: str) -> None:
        self.message, self.message_until = message, time.monotonic() + MESSAGE_SECONDS

    # --- drawing ------------------------------------------------------------------------------------

    def body_height(self) -> int:
        return max(curses.LINES - 3, 1)

    def draw(self) -> None:
        screen = self.screen
        screen.erase()
        height, width = screen.getmaxyx()
        instances = sum(len(job.get("instances") or []) for job in self.jobs)
        running = sum(1 for job in self.jobs for inst in job.get("instances") or [] if inst.get("state") == "RUNNING")
        title = (f" taskmaster top  {self.session.client.address}  {len(self.jobs)} jobs, {instances} instances, "
                 f"{running} running")
        clock = time.strftime(" %H:%M:%S ")
        room = max(width - len(clock), 0)
        title = title if len(title) <= room else title[: max(room - 1, 0)] + "…" if self.unicode else title[:room]
        self.put(0, 0, title.ljust(room) + clock, width, curses.A_REVERSE)
        name_width, spark_width, info_width = self.layout(width)
        header = " " + "JOB".ljust(name_width)
        for label, size in FIXED:
            header += " " + label.rjust(size) if label not in (" STATE", "HEALTH") else " " + label.strip().ljust(size)
        header += " " + "CPU (1 min)".ljust(spark_width) + " " + "MEM (1 min)".ljust(spark_width)
        if info_width:
            header += " INFO"
        self.put(1, 0, header, width, curses.A_BOLD)
        body = self.body_height()
        if self.selected < self.first:
            self.first = self.selected
        elif self.selected >= self.first + body:
            self.first = self.selected - body + 1
        for line, position in enumerate(range(self.first, min(len(self.rows), self.first + body))):
            self.draw_row(2 + line, self.rows[position], position == self.selected, name_width, spark_width,
                          info_width, width)
        if not self.rows:
            self.put(3, 2, "no job matches the filter" if self.pattern else "no job", width)
        self.put(height - 1, 0, self.footer(), width, curses.A_REVERSE)
        screen.refresh()

    def layout(self, width: int) -> tuple[int, int, int]:
        """Widths of the name, of each sparkline and of INFO (0: none) for a screen `width` wide."""
        fixed = 1 + sum(size + 1 for _, size in FIXED) + 2  # marker, columns, spaces before the sparklines
        longest = max((len(row.label) for row in self.rows), default=8)
        name = max(8, min(longest, 24, width - fixed - 16))
        left = width - fixed - name
        spark = max(4, min(30, left // 2))
        info = left - 2 * spark - 1
        return name, spark, info if info >= 10 else 0

    def draw_row(self, y: int, row: Row, selected: bool, name_width: int, spark_width: int, info_width: int,
                 width: int) -> None:
        state, up, restarts, health, cpu, used, info = cells(row)
        marker = ">" if selected else " "
        text = f"{marker}{row.label[:name_width].ljust(name_width)} {state[:8].ljust(8)} {up.rjust(6)} " \
               f"{restarts.rjust(3)} {health[:9].ljust(9)} {cpu.rjust(5)} {used.rjust(6)} "
        attribute = curses.A_REVERSE if selected else curses.A_NORMAL
        self.put(y, 0, text, width, attribute)
        if self.colour and not selected and state in STATE_COLOUR:
            self.put(y, 2 + name_width, state[:8], width, curses.color_pair(STATE_COLOUR[state]))
        x = len(text)
        cpu_samples = self.history.cpu.get(row.key, [])
        cpu_line = sparkline(cpu_samples, spark_width, max(100.0, *cpu_samples) if cpu_samples else 100.0, self.unicode)
        mem_line = sparkline(self.history.memory.get(row.key, []), spark_width, None, self.unicode)
        spark_attribute = curses.color_pair(4) if self.colour else curses.A_NORMAL
        self.put(y, x, cpu_line, width, spark_attribute)
        self.put(y, x + spark_width + 1, mem_line, width, spark_attribute)
        if info_width:
            self.put(y, x + 2 * spark_width + 2, info[:info_width], width)

    def footer(self) -> str:
        if self.asking is not None:
            return f" {self.asking[0]} {self.asking[1]}? y/N "
        if self.prompt is not None:
            return f" filter: {self.prompt}_   (a part of a name or a pattern like web*; Enter, or Esc)"
        if self.problem:
            return f" {safe(self.problem)} (trying again every second)"
        if self.message and time.monotonic() < self.message_until:
            return f" {self.message}"
        shown = f"  filter: {self.pattern}" if self.pattern else ""
        arrows = "↑↓" if self.unicode else "up/down"
        return f" q quit  {arrows} select  / filter  r restart  s stop{shown}"

    def put(self, y: int, x: int, text: str, width: int, attribute: int = curses.A_NORMAL) -> None:
        """Text clipped to the screen (curses refuses to write past the last column)."""
        height = self.screen.getmaxyx()[0]
        if not 0 <= y < height or x >= width:
            return
        try:
            self.screen.addnstr(y, x, text, max(width - x - (1 if y == height - 1 else 0), 0), attribute)
        except curses.error:
            pass
