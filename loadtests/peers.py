"""Order-book libraries from PyPI that wlex's engine is measured against.

Each peer is a function run(orders) -> trades over unit-quantity limit orders
(is_buy, order_no, price_fen), as loadtests.workloads.price_only_orders makes them. A run
builds its own book, feeds every order through the library's ordinary public API (the
order objects it wants are made inside the timed run: that is part of using it), and
returns the number of trades, which the benchmark checks against the engine's deals.

PEERS maps a peer's name to (PyPI distribution, loader); a loader imports the library and
returns its run function, or raises PeerUnavailable with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

Orders = list[tuple[bool, int, int]]
Run = Callable[[Orders], int]


class PeerUnavailable(Exception):
    """The library cannot be used here; the message says why."""


def _liquibook() -> Run:
    # enewhuis' LiquiBook (C++) through Mike Kipnis' SWIG wrapper. Fills reach Python only
    # through a listener; counting them there is the cheapest way to see a trade.
    import liquibook

    class Counter(liquibook.OrderListener):
        def __init__(self) -> None:
            liquibook.OrderListener.__init__(self)
            self.fills = 0

        def on_fill(self, order, matched_order, fill_qty, fill_cost):  # noqa: ARG002
            self.fills += 1

        def on_accept(self, order):  # noqa: ARG002
            pass

    def run(orders: Orders) -> int:
        book = liquibook.DepthOrderBook()
        counter = Counter()
        book.set_order_listener(counter)
        keep = []  # the book holds raw pointers to its orders: keep them alive
        add, order_ = book.add, liquibook.SimpleOrder
        for is_buy, _no, price in orders:
            order = order_(is_buy, price, 1)
            keep.append(order)
            add(order)
        return counter.fills

    return run


def _kautenja_limit_order_book() -> Run:
    # Christian Kauten's limit-order-book: a C++ book (red-black trees) behind ctypes.
    from limit_order_book import LimitOrderBook

    def run(orders: Orders) -> int:
        book = LimitOrderBook()
        buy, sell = book.limit_buy, book.limit_sell
        for is_buy, no, price in orders:
            if is_buy:
                buy(no, 1, price)
            else:
                sell(no, 1, price)
        # It reports no trades; with unit quantities each trade removes one buy and one sell.
        return (len(orders) - book.count()) // 2

    return run


def _orderly_chaos() -> Run:
    # Orderly-Chaos: a C++ price-time book behind ctypes, with a trade callback.
    from orderly_chaos import LimitOrderBook

    def run(orders: Orders) -> int:
        book = LimitOrderBook()
        buy, sell = book.limit_buy, book.limit_sell
        for is_buy, no, price in orders:
            if is_buy:
                buy(no, 1, price)
            else:
                sell(no, 1, price)
        trades = (len(orders) - book.count()) // 2
        book.close()
        return trades

    return run


def _obook() -> Run:
    # intrepidkarthi/orderbook: a C engine over its C ABI (ctypes); events are polled.
    import obook

    def run(orders: Orders) -> int:
        book = obook.Book(max_orders=len(orders) + 1)
        submit, BUY, SELL = book.submit, obook.BUY, obook.SELL
        for is_buy, no, price in orders:
            # One user per order: the engine prevents self-trades between one user's orders.
            submit(no, BUY if is_buy else SELL, price, 1)
        resting = len(book.book())
        book.close()
        return (len(orders) - resting) // 2

    return run


def _litebook() -> Run:
    # litebook: a Rust book (PyO3); prices are floats in ticks of tick_size.
    import litebook

    def run(orders: Orders) -> int:
        book = litebook.OrderBook(tick_size=1.0)
        create, add = book.create_order, book.add
        Buy, Sell = litebook.OrderType.Buy, litebook.OrderType.Sell
        trades = 0
        for is_buy, _no, price in orders:
            trades += len(add(create(Buy if is_buy else Sell, float(price), 1.0)))
        return trades

    return run


def _cython_orderbook() -> Run:
    # cython-orderbook: Cython orders and levels over sortedcontainers, Decimal prices.
    from cython_orderbook import Order, OrderBook, OrderSide

    def run(orders: Orders) -> int:
        book = OrderBook()
        add, BUY, SELL = book.add_limit_order, OrderSide.BID, OrderSide.ASK
        for is_buy, _no, price in orders:
            add(Order(BUY if is_buy else SELL, 1, price))
        return len(book.trade_log)

    return run


def _lightmatchingengine() -> Run:
    # Gavin Chan's LightMatchingEngine: pure Python, dicts of price levels.
    from lightmatchingengine.lightmatchingengine import LightMatchingEngine, Side

    def run(orders: Orders) -> int:
        engine = LightMatchingEngine()
        add, BUY, SELL = engine.add_order, Side.BUY, Side.SELL
        trades = 0
        for is_buy, _no, price in orders:
            _order, fills = add("lane", price, 1, BUY if is_buy else SELL)
            trades += len(fills) // 2  # one report for the aggressor, one for the resting order
        return trades

    return run


def _pyorderbook() -> Run:
    # pyorderbook: pure Python, heaps of Decimal price levels, uuid4 order ids.
    from pyorderbook import Book, ask, bid

    def run(orders: Orders) -> int:
        book = Book()
        match = book.match
        trades = 0
        for is_buy, _no, price in orders:
            trades += len(match((bid if is_buy else ask)("lane", price, 1)).trades)
        return trades

    return run


def _fastlob() -> Run:
    # fastlob: pure Python over sortedcontainers, Decimal prices; a started book runs a
    # background thread for expiries, stopped after the run.
    import logging

    from fastlob import Orderbook, OrderParams, OrderSide

    def run(orders: Orders) -> int:
        logging.getLogger("fastlob").setLevel(logging.ERROR)
        book = Orderbook("lane")
        book.start()
        try:
            process, BID, ASK = book.process, OrderSide.BID, OrderSide.ASK
            for is_buy, _no, price in orders:
                process(OrderParams(BID if is_buy else ASK, price, 1))
            bids, asks = book.best_bids(book.n_bids()), book.best_asks(book.n_asks())
            resting = sum(n for _p, _q, n in bids) + sum(n for _p, _q, n in asks)
        finally:
            book.stop()
        return (len(orders) - resting) // 2

    return run


def _orderbook_dyn4mik3() -> Run:
    # OrderBook 0.1.2 (2013), the "PyLimitOrderBook" often cited: Python 2 code (cStringIO,
    # implicit relative imports), so it does not import on Python 3.
    try:
        from orderbook import OrderBook  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable("Python 2 only: OrderBook 0.1.2 does not import on Python 3") from e
    raise PeerUnavailable("Python 2 only: OrderBook 0.1.2 was written for Python 2")


PEERS: dict[str, tuple[str, Callable[[], Run]]] = {
    "liquibook": ("liquibook", _liquibook),
    "kautenja-limit-order-book": ("limit-order-book", _kautenja_limit_order_book),
    "orderly-chaos": ("orderly-chaos", _orderly_chaos),
    "obook": ("obook", _obook),
    "litebook": ("litebook", _litebook),
    "cython-orderbook": ("cython-orderbook", _cython_orderbook),
    "lightmatchingengine": ("lightmatchingengine", _lightmatchingengine),
    "pyorderbook": ("pyorderbook", _pyorderbook),
    "fastlob": ("fastlob", _fastlob),
    "orderbook": ("orderbook", _orderbook_dyn4mik3),
}


def load_peers(names: list[str] | None = None) -> tuple[dict[str, Run], dict[str, str]]:
    """Import the peers: ({name: run}, {name: why unavailable})."""
    import logging

    runs: dict[str, Run] = {}
    unavailable: dict[str, str] = {}
    for name, (dist, loader) in PEERS.items():
        if names is not None and name not in names:
            continue
        try:
            runs[name] = loader()
        except PeerUnavailable as e:
            unavailable[name] = str(e)
        except ImportError as e:
            unavailable[name] = f"not installed (pip install {dist}): {e}"
        except Exception as e:  # a broken wheel must not stop the benchmark
            unavailable[name] = f"{type(e).__name__}: {e}"
    # pyorderbook calls logging.basicConfig(level=INFO) on import, which would make every
    # library that logs per order (fastlob) write to stderr: put the root back to default.
    logging.getLogger().setLevel(logging.WARNING)
    return runs, unavailable
