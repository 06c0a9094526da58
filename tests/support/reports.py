"""What a Matomo user reads about one site today, from Matomo's reporting API: the numbers of the
Visits Overview, Pages (URLs), Downloads, Events, Page Titles, Channel Type and custom dimension
reports. Today's reports are recomputed on each call on the local instance (its setup.sh sets
that), so they include what was tracked a moment ago.

Two of Matomo's own ways to keep in mind when reading them: a report's `nb_visits` per row is
summed over its sub-rows (Events by category counts a visit with a GET and a POST event twice;
a custom dimension counts a visit once per page), so `nb_events` and `nb_hits` are the counts
to read there; and with its default `action_title_category_delimiter` (empty) page titles are
not split into groups, so an error title such as `404/URL = …` is one flat label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Matomo's labels of Referrers.getReferrerType, by the referrer type the visitor log shows.
CHANNELS = {"Direct Entry": "direct", "Search Engines": "search", "Websites": "website", "Campaigns": "campaign",
            "Social Networks": "social"}


@dataclass
class Reports:
    visits: int
    visitors: int
    actions: int
    bounces: int
    pageviews: int
    downloads: int
    events: int
    # label → count
    event_categories: dict[str, int] = field(default_factory=dict)
    event_actions: dict[str, int] = field(default_factory=dict)
    page_urls: dict[str, int] = field(default_factory=dict)
    page_titles: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    download_urls: dict[str, int] = field(default_factory=dict)
    # dimension name → {value → actions}
    dimensions: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def error_titles(self) -> dict[str, int]:
        """Page titles of error pages, Matomo's `<status>/URL = …/From = …` convention."""
        return {t: n for t, n in self.page_titles.items() if t[:3].isdigit() and t[3:].startswith("/URL = ")}


def read(matomo, idsite: int, dimensions: dict[str, int] | None = None) -> Reports:
    """Today's reports of the site; `dimensions` names the custom dimensions (name → id) to read."""
    def api(method: str, **params):
        return matomo.api(method, idSite=idsite, period="day", date="today", **params)

    def rows(method: str, value: str, flat: int = 1, **params) -> dict[str, int]:
        return {row["label"]: int(row[value]) for row in api(method, flat=flat, filter_limit=-1, **params)}

    summary, actions = api("VisitsSummary.get"), api("Actions.get")
    categories = rows("Events.getCategory", "nb_events", flat=0)
    return Reports(
        visits=int(summary["nb_visits"]),
        visitors=int(summary["nb_uniq_visitors"]),
        actions=int(summary["nb_actions"]),
        bounces=int(summary["bounce_count"]),
        pageviews=int(actions["nb_pageviews"]),
        downloads=int(actions["nb_downloads"]),
        events=sum(categories.values()),
        event_categories=categories,
        event_actions=rows("Events.getAction", "nb_events", flat=0),
        page_urls=rows("Actions.getPageUrls", "nb_hits"),
        page_titles=rows("Actions.getPageTitles", "nb_hits"),
        channels={CHANNELS.get(label, label): n for label, n in rows("Referrers.getReferrerType", "nb_visits").items()},
        download_urls=rows("Actions.getDownloads", "nb_hits"),
        dimensions={name: rows("CustomDimensions.getCustomDimension", "nb_hits", flat=0, idDimension=n)
                    for name, n in (dimensions or {}).items()},
    )
