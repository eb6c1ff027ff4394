"""Operations: the health routes, the stats and metrics routes, and the API document."""
