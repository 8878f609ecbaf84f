"""Webhook endpoints, deliveries and the tenant's signing secret over HTTP. Routes parse, call the service,
and present."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.errors import APIError
from service.api.json_body import JSONRoute
from service.api.openapi import id_links
from service.idempotency import shows_secret
from service.webhooks import present, service
from service.webhooks.events import EventType
from service.webhooks.schemas import (
    Delivery,
    DeliveryList,
    Endpoint,
    EndpointCreate,
    EndpointList,
    EndpointUpdate,
    EndpointWithSecret,
    TenantSecret,
    TenantSecretShown,
)

router = APIRouter(tags=["webhooks"], route_class=JSONRoute)
ENDPOINTS = "/v1/webhook-endpoints"
DELIVERIES = "/v1/webhook-deliveries"
SECRET = "/v1/webhook-secret"
Limit = Annotated[int, Query(ge=1, le=200)]


@router.post(
    ENDPOINTS,
    status_code=201,
    response_model=EndpointWithSecret,
    responses={
        201: id_links(
            GetEndpoint=f"GET {ENDPOINTS}/{{endpoint_id}}",
            UpdateEndpoint=f"PATCH {ENDPOINTS}/{{endpoint_id}}",
            RotateSecret=f"POST {ENDPOINTS}/{{endpoint_id}}/rotate-secret",
        )
    },
    summary="Register a webhook endpoint",
    dependencies=[Depends(shows_secret)],  # never kept for an Idempotency-Key replay
    description="Answers with the signing secret, shown only this once. Deliveries carry Standard Webhooks "
    "headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).",
)
def create_endpoint(
    body: EndpointCreate, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> EndpointWithSecret:
    endpoint, secret = service.create_endpoint(session, key=key, body=body, settings=settings)
    return present.endpoint_with_secret(endpoint, secret)


@router.get(ENDPOINTS, response_model=EndpointList, summary="List webhook endpoints, newest first")
def list_endpoints(session: SessionDep, key: CurrentKey, limit: Limit = 50, cursor: str | None = None) -> EndpointList:
    rows, has_more = service.list_endpoints(session, key=key, limit=limit, cursor=cursor)
    return EndpointList(
        data=[present.endpoint(e) for e in rows],
        has_more=has_more,
        next_cursor=rows[-1].id if has_more and rows else None,
    )


@router.get(ENDPOINTS + "/{endpoint_id}", response_model=Endpoint, summary="Get a webhook endpoint")
def get_endpoint(endpoint_id: str, session: SessionDep, key: CurrentKey) -> Endpoint:
    return present.endpoint(service.get_endpoint(session, key=key, endpoint_id=endpoint_id))


@router.patch(ENDPOINTS + "/{endpoint_id}", response_model=Endpoint, summary="Change or enable/disable an endpoint")
def update_endpoint(
    endpoint_id: str, body: EndpointUpdate, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> Endpoint:
    endpoint = service.update_endpoint(session, key=key, endpoint_id=endpoint_id, body=body, settings=settings)
    return present.endpoint(endpoint)


@router.delete(ENDPOINTS + "/{endpoint_id}", status_code=204, summary="Delete an endpoint and its deliveries")
def delete_endpoint(endpoint_id: str, session: SessionDep, key: CurrentKey) -> Response:
    service.delete_endpoint(session, key=key, endpoint_id=endpoint_id)
    return Response(status_code=204)


@router.post(
    ENDPOINTS + "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    summary="Rotate an endpoint's signing secret",
    dependencies=[Depends(shows_secret)],  # never kept for an Idempotency-Key replay
    description="Answers with the new secret, shown only this once. For 24 hours every delivery carries both "
    "signatures (old and new), so receivers can switch without missing one.",
)
def rotate_endpoint_secret(endpoint_id: str, session: SessionDep, key: CurrentKey) -> EndpointWithSecret:
    endpoint, secret = service.rotate_endpoint_secret(session, key=key, endpoint_id=endpoint_id)
    return present.endpoint_with_secret(endpoint, secret)


@router.get(
    DELIVERIES,
    response_model=DeliveryList,
    summary="List webhook deliveries with their attempts, newest first",
)
def list_deliveries(
    session: SessionDep,
    key: CurrentKey,
    limit: Limit = 20,
    cursor: str | None = None,
    endpoint_id: str | None = None,
    event_type: EventType | None = None,
    status: Literal["pending", "delivered", "failed"] | None = None,
) -> DeliveryList:
    rows, has_more = service.list_deliveries(
        session, key=key, limit=limit, cursor=cursor, endpoint_id=endpoint_id, event_type=event_type, status=status
    )
    return DeliveryList(
        data=[present.delivery(d, attempts) for d, attempts in rows],
        has_more=has_more,
        next_cursor=rows[-1][0].id if has_more and rows else None,
    )


@router.get(DELIVERIES + "/{delivery_id}", response_model=Delivery, summary="Get a delivery and its attempts")
def get_delivery(delivery_id: str, session: SessionDep, key: CurrentKey) -> Delivery:
    return present.delivery(*service.get_delivery(session, key=key, delivery_id=delivery_id))


@router.post(
    DELIVERIES + "/{delivery_id}/redeliver",
    status_code=202,
    response_model=Delivery,
    summary="Send a delivery again now",
    description="Queues one more attempt now, whether the delivery is pending, delivered or failed.",
)
def redeliver(delivery_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> Delivery:
    return present.delivery(*service.redeliver(session, key=key, delivery_id=delivery_id, settings=settings))


@router.get(
    SECRET,
    response_model=TenantSecret,
    summary="About the secret that signs jobs' and batches' own webhook_url deliveries",
)
def get_tenant_secret(session: SessionDep, key: CurrentKey) -> TenantSecret:
    row = service.tenant_secret(session, key=key)
    if row is None:
        raise APIError(404, "not_found", "no webhook secret yet: POST /v1/webhook-secret creates and shows it")
    return present.tenant_secret(row)


@router.post(
    SECRET,
    response_model=TenantSecretShown,
    summary="Show the tenant's webhook secret (once)",
    dependencies=[Depends(shows_secret)],  # never kept for an Idempotency-Key replay
    description="Creates the secret if needed and shows it; it is shown once (409 afterwards: rotate instead). "
    "It signs deliveries to the `webhook_url` of jobs and batches.",
)
def reveal_tenant_secret(session: SessionDep, key: CurrentKey) -> TenantSecretShown:
    return present.tenant_secret_shown(*service.reveal_tenant_secret(session, key=key))


@router.post(
    SECRET + "/rotate",
    response_model=TenantSecretShown,
    summary="Rotate the tenant's webhook secret",
    dependencies=[Depends(shows_secret)],  # never kept for an Idempotency-Key replay
    description="Answers with the new secret, shown only this once; the old one also signs for 24 hours.",
)
def rotate_tenant_secret(session: SessionDep, key: CurrentKey) -> TenantSecretShown:
    return present.tenant_secret_shown(*service.rotate_tenant_secret(session, key=key))
