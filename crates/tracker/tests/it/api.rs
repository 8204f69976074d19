//! The query API's contract: errors, filters, the live feed, the page and the metrics.
