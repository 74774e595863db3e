from pinet.services.lb.app import main

main()
