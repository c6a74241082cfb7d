"""The Python client of Bastionary's HTTP API.

```python
from bastionary.client import Client

bc = Client("http://localhost:6066", api_key=...)
bc.track_usage("cust-1", "llm.completion", {"model": "m", "total_tokens": 812})
bc.usage("llm_tokens", customer="cust-1", window="day")
bc.credit_balance("cust-1")
bc.upcoming_invoice("cust-1")
bc.check("cust-1", "api_calls")
bc.close()  # flushes; also done at exit
```

A failed read or write raises :class:`BastionaryError` (:class:`ApiUnreachable` when the API
did not answer). :class:`AsyncClient` is the same client for asyncio. This package imports
no other part of ``bastionary``, so it can be vendored or shipped on its own.
"""

from bastionary.client.async_client import AsyncClient
from bastionary.client.errors import ApiUnreachable, BastionaryError, DeliveryFailed, EventsRejected
from bastionary.client.sync_client import Client

__all__ = ["ApiUnreachable", "AsyncClient", "BastionaryError", "Client", "DeliveryFailed", "EventsRejected"]
