"""The ingress job kind: RTMP, WHIP and URL inputs into a room (a drop-in for LiveKit's Go ingress).

The layers follow the egress kind's (lkmedia.egress), one module each:

* ``spec``: request -> spec. An IngressInfo (from IOInfo.GetIngressInfo for a push input,
  or IngressInternal.StartIngress for a URL) checked once, in the service, the way the Go
  ingress checks it (protocol ``ingress.Validate``, enabled, input type): ``IngressSpec``,
  and what a job process is given to run it (``IngressLaunch``: the join token, the input).
* ``state``: the one place an IngressState changes status and is stamped (BUFFERING ->
  PUBLISHING -> INACTIVE / COMPLETE / ERROR).
* ``kind``: the ingress as the worker core sees it (lkmedia.worker.kind.JobKind): its costs
  (``cpu_cost:``), how its Info reads and is ended from outside.
* ``recipe``: spec -> graph: the input's source node (lkmedia.sources.flv.FlvSource for an
  RTMP publish, FileSource for a URL) and what it feeds.

The RTMP front end is lkmedia.rtmp (it runs in the service process and checks the stream
key before accepting a publish); the config is lkmedia.service.ingress_config.
"""
