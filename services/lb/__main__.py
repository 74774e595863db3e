from services.lb.app import main

main()
