"""The suite's DNS server on 127.0.0.1: :class:`tcletd.attack.dnsserver.DnsServer`, re-exported
so the tests keep importing it from here."""

from __future__ import annotations

from tcletd.attack.dnsserver import DnsServer

__all__ = ["DnsServer"]
