"""[popularity]: how demand is scored and which images are wanted warm.

All options here are mutable: SIGHUP re-reads them.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("popularity", title="Popularity and policy",
                     help="Demand scoring, eligibility and pinning.")

OPTS = [
    cfg.FloatOpt("half_life", default=86400.0, min=1.0, max=365 * 86400.0, mutable=True,
                 help="Seconds after which a demand event counts half."),
    cfg.FloatOpt("threshold", default=3.0, min=0.0, mutable=True,
                 help="An eligible image whose score reaches this is wanted."),
    cfg.FloatOpt("forget_below", default=0.01, min=0.0, mutable=True,
                 help="An image whose score has fallen below this in every target, "
                      "that is not pinned and of which warmer holds no copy, is "
                      "dropped from memory (checked every reconcile_interval on "
                      "every daemon), so that memory follows the images in use, "
                      "not the catalogue. With the default half-life, one volume "
                      "created 6.6 days ago scores 0.01. 0: never drop."),
    cfg.IntOpt("top_k", default=20, min=0, max=100_000, mutable=True,
               help="The K eligible images with the highest positive scores "
                    "are wanted, whatever their score."),
    cfg.FloatOpt("weight_volume_create", default=1.0, min=0.0, mutable=True,
                 help="Score added by a Cinder volume.create.end from an image."),
    cfg.FloatOpt("weight_cache_miss", default=0.5, min=0.0, mutable=True,
                 help="Score added by a Cinder image_volume_cache.miss. It comes "
                      "with a volume.create.end of the same volume, so it weighs less."),
    cfg.FloatOpt("weight_cache_hit", default=0.5, min=0.0, mutable=True,
                 help="Score added by a Cinder image_volume_cache.hit."),
    cfg.FloatOpt("weight_image_send", default=0.5, min=0.0, mutable=True,
                 help="Score added by a Glance image.send (a download)."),
    cfg.ListOpt("ignored_download_users", default=[], mutable=True,
                help="Keystone user ids whose Glance downloads (image.send, by "
                     "receiver_user_id) are not demand: warmer's own downloads, "
                     "when it copies an image out of a store that is not RBD, "
                     "must not make that image more popular. When [glance] "
                     "authenticates with keystoneauth, the user id of warmer's "
                     "own session is added to this list automatically (once "
                     "Keystone has answered); list it here too if warmer may "
                     "download before that, or runs without auth_type. Such "
                     "notifications are counted with outcome own_download."),
    cfg.ListOpt("disk_formats", default=["raw"], mutable=True,
                help="Eligible disk formats. Cinder's RBD driver clones only raw."),
    cfg.IntOpt("max_image_size", default=0, min=0, mutable=True,
               help="Bytes; larger images are not eligible. 0 means no limit."),
    cfg.ListOpt("visibilities", default=["public", "community", "shared", "private"],
                mutable=True, help="Eligible image visibilities."),
    cfg.StrOpt("pin_property", default="warmer_pin", mutable=True,
               help="An image property that pins the image warm when its value "
                    "is true (yes, 1, on, true). Empty disables it."),
    cfg.StrOpt("pin_tag", default="warmer-pin", mutable=True,
               help="An image tag that pins the image warm. Empty disables it."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
