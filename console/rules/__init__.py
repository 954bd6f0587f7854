"""The console's pure parts: mail parsing, search, framing headers, the token check."""
