import faulthandler, multiprocessing as mp, sys, torch
faulthandler.dump_traceback_later(25, exit=True)
def work(n):
    faulthandler.dump_traceback_later(20, exit=True)
    x = torch.arange(n, dtype=torch.int64)
    for _ in range(n):
        x.to("cuda")
    torch.cuda.synchronize()
    print("child done", mp.current_process().name, file=sys.stderr, flush=True)
if __name__ == "__main__":
    method = sys.argv[1]
    p = mp.get_context(method).Process(target=work, args=(10,))
    p.start(); p.join(); print("exitcode", p.exitcode, file=sys.stderr, flush=True)
