"""The ingress job kind: RTMP, WHIP and URL inputs published into a LiveKit room (a drop-in
for LiveKit's Go ingress).

The layers follow the egress kind's (lkmedia.egress), one module each:

* ``spec``: request -> spec. An IngressInfo (from IOInfo.GetIngressInfo for a push input,
  or IngressInternal.StartIngress for a URL) checked once, in the service, the way the Go
  ingress checks it (protocol ``ingress.Validate``, enabled, input type): ``IngressSpec``,
  and what a job process is given to run it (``IngressLaunch``: the join token, the input).
* ``state``: IngressState status changes as the service side makes them (BUFFERING ->
  PUBLISHING -> INACTIVE / COMPLETE / ERROR), stamped.
* ``kind``: the ingress as the worker core sees it (lkmedia.worker.kind.JobKind): its costs
  (``cpu_cost:``), how its Info reads and is ended from outside.
* ``recipe``: the session's input source node (the service's relay of an RTMP publish, a
  URL pulled in real time).
* ``presets``: what is published (video layers, Opus settings) and the participant token.
* ``session``: one session's graph, input -> scale -> lkmedia.sinks.room.RoomSink, with the
  states it reports and the media watchdog.

The RTMP front end is lkmedia.rtmp (in the service process, it checks the stream key before
accepting a publish); the service side is lkmedia.service.ingress (with ingress_config and
ingress_relay).
"""
