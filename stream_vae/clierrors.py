"""One place that turns expected errors into a one-line message and exit code 2, for every CLI verb."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from stream_vae.exceptions import StreamVAEError

F = TypeVar("F", bound=Callable[..., Any])


def fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def friendly(fn: F) -> F:
    """Bad config, missing or unreadable files, bad data in a file, an unreachable broker/Redis: one
    line on stderr, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:  # fail() inside the verb, or a deliberate exit code: a RuntimeError, not an error
            raise
        except StreamVAEError as exc:
            fail(str(exc))
        except BrokenPipeError:  # `stream-vae alerts | head -1`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            raise typer.Exit(0) from None
        except OSError as exc:  # a missing file, a directory where a file was meant, no permission
            fail(f"{exc.strerror or type(exc).__name__}: {exc.filename}" if exc.filename
                 else str(exc) or type(exc).__name__)  # a bare TimeoutError has no message
        except ValidationError as exc:  # before ValueError, which it is
            e = exc.errors()[0]
            loc = "__".join(str(p) for p in e["loc"]).upper()
            fail(f"bad setting STREAM_VAE_{loc}: {e['msg']}")
        except (ValueError, RuntimeError) as exc:  # bad data in a file (shapes, labels, NaN, a broken CSV)
            fail(f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]
