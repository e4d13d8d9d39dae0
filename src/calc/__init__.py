"""calc: the demo's slow calc API, the talk's nine versions as profiles, and v10."""
