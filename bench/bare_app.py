"""The bench's reference: a constant JSON body on the API's server stack.

Same framework (Starlette), same server and flags (uvicorn, uvloop,
httptools, one worker), no middleware, no Redis, no lookup.
"""

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"country":{"code":"DE","name":"Germany"},"standard_rate":19.0}'


async def constant(request):
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/constant", constant)])
