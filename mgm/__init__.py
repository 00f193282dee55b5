"""mgm: Mini-Gemini re-implemented."""
