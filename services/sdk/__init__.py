"""The wlex client SDK (async): CarrierClient streams the market and bids over
/v1/stream, ShipperClient posts loads and waits for their outcome over REST."""

from services.sdk.carrier import CarrierClient, CommandError, StreamClosed
from services.sdk.shipper import ApiError, ShipperClient

__all__ = ["ApiError", "CarrierClient", "CommandError", "ShipperClient", "StreamClosed"]
