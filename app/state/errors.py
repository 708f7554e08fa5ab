"""The shared state's error (RateLimited is a domain error of `app.errors`) and what a store call may raise.

StoreUnavailable   unavailable   the shared store cannot be reached for an auth decision (HTTP 503)
"""

from __future__ import annotations

from redis.exceptions import RedisError

from app.errors import Unavailable


class StoreUnavailable(Unavailable):
    """The shared store did not answer in time; auth decisions that need it fail closed."""


# What a call to the store raises when the store is down, slow or refusing writes: redis-py's errors,
# the builtin TimeoutError (an OSError) of the deadline each call runs under, and RuntimeError: under
# uvloop, writing to a connection the store closed as it died raises "unable to perform operation on
# <TCPTransport closed=True ...>", which redis-py passes on unconverted (it does drop the connection).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, RuntimeError)
