"""tcletd attack: run a catalogue of hostile tclets against a host and judge each outcome."""
