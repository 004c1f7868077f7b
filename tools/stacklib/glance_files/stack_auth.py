"""A paste filter that stands in for keystonemiddleware's auth_token.

The local stack has no keystone. Glance's stock ``unauthenticated-context``
pipeline gives a context without roles, which Glance's current default
policies refuse with 403. This filter sets the identity headers that
auth_token would set after validating a token (user, project, roles), so
Glance's ``context`` filter builds an ordinary admin context from them.

It is loaded by Glance's own virtualenv and is never used by warmer. Any
identity headers the client sent are replaced, as auth_token does.

Every request is the user ``stack-admin`` (the one warmer's stack config
lists in ``[popularity] ignored_download_users``), unless it carries
``X-Stack-User-Id``: then it is that user, as a request with another
user's token would be. Tests use it to download an image as a tenant.
"""


class StackAuth:
    def __init__(self, app, conf):
        self.app = app
        self.identity = {
            "HTTP_X_IDENTITY_STATUS": "Confirmed",
            "HTTP_X_USER_ID": conf.get("user_id", "stack-admin"),
            "HTTP_X_USER_NAME": conf.get("user_name", "admin"),
            "HTTP_X_PROJECT_ID": conf.get("project_id", "stack-project"),
            "HTTP_X_PROJECT_NAME": conf.get("project_name", "admin"),
            "HTTP_X_ROLES": conf.get("roles", "admin,member,reader"),
        }

    def __call__(self, environ, start_response):
        as_user = environ.pop("HTTP_X_STACK_USER_ID", None)
        for key in [k for k in environ if k.startswith("HTTP_X_") and
                    k != "HTTP_X_OPENSTACK_REQUEST_ID"]:
            if key.startswith(("HTTP_X_USER", "HTTP_X_PROJECT", "HTTP_X_ROLE",
                               "HTTP_X_IDENTITY", "HTTP_X_TENANT",
                               "HTTP_X_SERVICE")):
                del environ[key]
        environ.update(self.identity)
        if as_user:
            environ["HTTP_X_USER_ID"] = as_user
            environ["HTTP_X_USER_NAME"] = as_user
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    conf = dict(global_conf, **local_conf)

    def _filter(app):
        return StackAuth(app, conf)
    return _filter
