"""The equal-budget recipe search (rounds 1-5, 2026-12-02 to 2026-12-03) (studies/recipe_search/README.md)."""
